//! Credentials from Secrets Manager (served by moto) and RDS IAM tokens
//! (checked against botocore), against real PostgreSQL servers.
//!
//! They need the adapter's `secrets-manager` and `iam-auth` features, in
//! this crate and in the `orders` binary some of them run: integration-tests'
//! `aws` feature and the examples' features, which `scripts/test` turns on.
//! Built without them, this file is one failing test saying so, not an
//! empty one: a run that leaves the credential tests out must not pass as
//! if it had run them.

#[cfg(feature = "aws")]
#[path = "credentials/with_aws.rs"]
mod with_aws;

#[cfg(not(feature = "aws"))]
#[test]
fn the_credential_tests_need_the_aws_features() {
    panic!(
        "tests/tests/credentials.rs was built without the AWS features, so its tests did not run: run scripts/test, \
         or cargo build --workspace --bins --features {FEATURES} && cargo test --features {FEATURES} --test credentials",
    );
}

/// What `scripts/test` enables; the same list as there.
#[cfg(not(feature = "aws"))]
const FEATURES: &str = "integration-tests/aws,example-functions/secrets-manager,example-functions/iam-auth";
