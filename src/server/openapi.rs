//! The OpenAPI document, built by utoipa from the routes' annotations and
//! served at `/openapi.json`.

use actix_web::{web, HttpResponse};

use super::error::{ErrorBody, OkBody};
use super::{handlers, ops};
use crate::contract::{Fact, FactsBody, Problem};

async fn openapi_json() -> HttpResponse {
    HttpResponse::Ok().json(api_doc())
}

struct TokenScheme;

impl utoipa::Modify for TokenScheme {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{ApiKey, ApiKeyValue, SecurityScheme};
        doc.components.get_or_insert_with(Default::default).add_security_scheme(
            "token",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "Authorization",
                "The environment's token (mounted at /var/run/secrets/lagoon/dynamic/insights-token/INSIGHTS_TOKEN), raw or as `Bearer <token>`",
            ))),
        );
    }
}

#[derive(utoipa::OpenApi)]
#[openapi(
    info(title = "insights-remote ingestion API", description = "Facts and problems from Lagoon workloads, published to Lagoon core once the broker confirms them."),
    paths(handlers::post_facts, handlers::post_problems, handlers::delete_facts, handlers::delete_service_facts, handlers::delete_problems, handlers::delete_service_problems, ops::healthz, ops::readyz),
    components(schemas(Fact, Problem, FactsBody, OkBody, ErrorBody, crate::contract::FactType, crate::contract::Severity)),
    modifiers(&TokenScheme)
)]
struct ApiDoc;

/// The OpenAPI document served at `/openapi.json`.
pub fn api_doc() -> utoipa::openapi::OpenApi {
    <ApiDoc as utoipa::OpenApi>::openapi()
}

/// The route table: the ingestion routes, the probes and this document.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/facts", web::post().to(handlers::post_facts))
        .route("/problems", web::post().to(handlers::post_problems))
        .route("/facts/{source}", web::delete().to(handlers::delete_facts))
        .route(
            "/facts/{source}/{service}",
            web::delete().to(handlers::delete_service_facts),
        )
        .route(
            "/problems/{source}",
            web::delete().to(handlers::delete_problems),
        )
        .route(
            "/problems/{source}/{service}",
            web::delete().to(handlers::delete_service_problems),
        )
        .route("/healthz", web::get().to(ops::healthz))
        .route("/readyz", web::get().to(ops::readyz))
        .route("/openapi.json", web::get().to(openapi_json));
}
