//! The OpenAPI document, built by utoipa from the routes' annotations and
//! served at `/openapi.json`.

use actix_web::HttpResponse;

use super::error::{ErrorBody, OkBody};
use super::{handlers, ops};
use crate::contract::{Fact, FactsBody, Problem};

pub(super) async fn openapi_json() -> HttpResponse {
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
