//! Any request body for POST /facts and /problems: parsed into a message or
//! refused with a client error, never a panic; identity always from the token.
#![no_main]

use insights_remote::server::{facts_message, problems_message};
use insights_remote::token::Claims;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let claims = Claims {
        namespace: "ns".into(),
        environment_id: "42".into(),
        project_name: "p".into(),
        environment_name: "e".into(),
    };
    if let Ok(m) = facts_message(&claims, data, usize::MAX) {
        assert_eq!(m.environment, 42);
        assert!(m.facts.iter().all(|f| f.environment == "42" && f.project_name == "p" && !f.source.is_empty()));
    }
    if let Ok(m) = problems_message(&claims, data, usize::MAX) {
        assert!(m.problems.iter().all(|p| p.environment == 42 && !p.source.is_empty()));
    }
});
