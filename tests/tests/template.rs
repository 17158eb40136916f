//! `template.yaml` against the code it deploys: what `cfn-lint` and
//! `sam validate --lint` (`scripts/lint-template`) cannot know.
//!
//! - every example binary is a function built from the workspace, with
//!   the cargo features its variables need;
//! - every variable the library reads is set from a parameter, and the
//!   parameters' defaults make a working function;
//! - reserved concurrency is the connection slots divided by the pool size,
//!   for every value the parameters allow;
//! - the dashboard and the alarms name only metrics the adapter emits, and
//!   the alarms the README promises exist for each function.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use integration_tests::cargo_lambda::build_features;
use integration_tests::orders::{body, post_valid_order, status, OrdersEnv};
use serde_norway::Value;

/// The metric names a real EMF record of the `orders` function declares:
/// the names the dashboard and the alarms must use, taken from what the code
/// emits rather than from a list copied by hand.
async fn emitted_metric_names() -> BTreeSet<String> {
    // A record per invocation, so that one is written after the answer.
    let env = OrdersEnv::start(&[("DB_METRICS_INTERVAL_MS", "0")]).await;
    assert_eq!(status(env.api.invoke(post_valid_order("tea", 1)).await.response()), 201);
    let record = env.emf_records_after_answers(1).await.swap_remove(0);
    let declared: BTreeSet<String> = record["_aws"]["CloudWatchMetrics"][0]["Metrics"]
        .as_array()
        .expect("declared metrics")
        .iter()
        .map(|m| m["Name"].as_str().expect("a metric name").to_owned())
        .collect();
    for name in &declared {
        assert!(record.get(name).is_some(), "the record declares {name} and must carry its value: {record}");
    }
    assert!(declared.len() >= 10, "the adapter's metrics: {declared:?}");
    declared
}

/// Variables the template sets for issue 4's features before the library
/// reads them.
const PLANNED_VARIABLES: [&str; 3] = ["DB_METRICS", "DB_METRICS_NAMESPACE", "DB_SLOW_QUERY_MS"];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ is in the workspace").to_path_buf()
}

fn template() -> Value {
    let text = std::fs::read_to_string(root().join("template.yaml")).expect("read template.yaml");
    serde_norway::from_str(&text).expect("template.yaml is YAML")
}

/// `value` if it is `!<tag> inner`, e.g. `!Ref Name`.
fn tagged<'a>(value: &'a Value, tag: &str) -> Option<&'a Value> {
    match value {
        Value::Tagged(tagged) if tagged.tag == tag => Some(&tagged.value),
        _ => None,
    }
}

/// The parameter name of a `!Ref Name`. Panics otherwise.
fn ref_name(value: &Value) -> &str {
    tagged(value, "Ref").and_then(Value::as_str).unwrap_or_else(|| panic!("not a !Ref: {value:?}"))
}

fn str_list(value: &Value) -> Vec<String> {
    let items = value.as_sequence().unwrap_or_else(|| panic!("not a list: {value:?}"));
    items
        .iter()
        .map(|v| match v {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            other => panic!("not a scalar: {other:?}"),
        })
        .collect()
}

fn resources_of_type<'a>(template: &'a Value, kind: &str) -> BTreeMap<String, &'a Value> {
    let resources = template["Resources"].as_mapping().expect("Resources");
    resources
        .iter()
        .filter(|(_, resource)| resource["Type"] == kind)
        .map(|(name, resource)| (name.as_str().expect("logical id").to_owned(), resource))
        .collect()
}

/// The example binaries: `example-functions/src/bin/*.rs`.
fn example_binaries() -> BTreeSet<String> {
    let dir = root().join("example-functions/src/bin");
    std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|entry| entry.expect("dir entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "rs"))
        .map(|path| path.file_stem().expect("file name").to_string_lossy().into_owned())
        .collect()
}

/// Every `"DB_…"` or `"DATABASE_URL"` string literal in the library's source.
fn library_variables() -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut dirs = vec![root().join("runtime-adapter/src")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("read {}: {e}", dir.display())) {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                dirs.push(path);
                continue;
            }
            let Ok(source) = std::fs::read_to_string(&path) else { continue };
            for literal in source.split('"').skip(1).step_by(2) {
                let is_name = literal.chars().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_');
                if is_name && ((literal.starts_with("DB_") && literal.len() > 3) || literal == "DATABASE_URL") {
                    names.insert(literal.to_owned());
                }
            }
        }
    }
    for read_in_a_submodule in ["DATABASE_URL", "DB_HOST", "DB_SECRET_ARN", "DB_POOL_SIZE"] {
        assert!(names.contains(read_in_a_submodule), "found the library's variables: {names:?}");
    }
    names
}

/// `Globals.Function.Environment.Variables`: variable → parameter name.
fn environment(template: &Value) -> BTreeMap<String, String> {
    let variables = template["Globals"]["Function"]["Environment"]["Variables"]
        .as_mapping()
        .expect("Globals environment variables");
    variables
        .iter()
        .map(|(name, value)| (name.as_str().expect("variable name").to_owned(), ref_name(value).to_owned()))
        .collect()
}

#[test]
fn every_example_binary_is_a_function_built_from_the_workspace() {
    let template = template();
    let globals = &template["Globals"]["Function"];
    assert_eq!(globals["Runtime"], "provided.al2023");
    assert_eq!(globals["Handler"], "bootstrap");
    assert_eq!(str_list(&globals["Architectures"]), ["arm64"]);

    let mut built = BTreeSet::new();
    for (name, function) in resources_of_type(&template, "AWS::Serverless::Function") {
        assert_eq!(function["Metadata"]["BuildMethod"], "rust-cargolambda", "{name}");
        assert_eq!(function["Properties"]["CodeUri"], "./", "{name} is built from the workspace root");
        let binary = function["Metadata"]["BuildProperties"]["Binary"].as_str().expect("BuildProperties.Binary");
        assert!(built.insert(binary.to_owned()), "{binary} is deployed twice");
        assert_eq!(function["Properties"]["LoggingConfig"]["LogFormat"], "JSON", "{name}");
        let group = ref_name(&function["Properties"]["LoggingConfig"]["LogGroup"]);
        assert!(
            tagged(&template["Resources"][group]["Properties"]["RetentionInDays"], "Ref").is_some(),
            "{group} has a retention"
        );
    }
    assert_eq!(
        built,
        example_binaries(),
        "the functions in template.yaml are the binaries in example-functions/src/bin"
    );
}

/// The variables that need one of runtime-adapter's optional features,
/// with the example-functions feature forwarding it.
const FEATURE_VARIABLES: [(&str, &str); 2] =
    [("DB_SECRET_ARN", "example-functions/secrets-manager"), ("DB_IAM_AUTH", "example-functions/iam-auth")];

/// SAM passes cargo-lambda only the binary's name (`BuildProperties.Binary`),
/// so a function's features come from cargo-lambda's per-binary build table
/// in `example-functions/Cargo.toml`: each function the template gives
/// `DB_SECRET_ARN` or `DB_IAM_AUTH` (from the globals or its own
/// environment) must be built with the feature, or setting the parameter
/// would fail its INIT.
#[test]
fn every_function_is_built_with_the_features_its_variables_need() {
    let template = template();
    let globals = environment(&template);
    let functions = resources_of_type(&template, "AWS::Serverless::Function");
    assert!(!functions.is_empty());
    for (name, function) in functions {
        let binary = function["Metadata"]["BuildProperties"]["Binary"].as_str().expect("BuildProperties.Binary");
        let own = function["Properties"]["Environment"]["Variables"].as_mapping();
        let sets =
            |variable: &str| globals.contains_key(variable) || own.is_some_and(|vars| vars.contains_key(variable));
        let features = build_features(binary);
        for (variable, feature) in FEATURE_VARIABLES {
            if sets(variable) {
                assert!(
                    features.iter().any(|f| f == feature),
                    "{name} sets {variable}, so `{binary}` must be built with {feature}: add it to \
                     [package.metadata.lambda.bin.{binary}.build] features in example-functions/Cargo.toml \
                     (it has {features:?})"
                );
            }
        }
    }
}

#[test]
fn every_variable_the_library_reads_is_set_from_a_parameter() {
    let template = template();
    let environment = environment(&template);
    let parameters = template["Parameters"].as_mapping().expect("Parameters");
    for (variable, parameter) in &environment {
        assert!(parameters.contains_key(parameter.as_str()), "{variable} refers to a missing parameter {parameter}");
    }
    let set: BTreeSet<String> = environment.keys().cloned().collect();
    let missing: Vec<String> = library_variables().into_iter().filter(|v| !set.contains(v)).collect();
    assert!(missing.is_empty(), "the library reads {missing:?}, which template.yaml does not set");
    for planned in PLANNED_VARIABLES {
        assert!(set.contains(planned), "template.yaml does not set {planned}");
    }
}

#[tokio::test]
async fn the_parameters_defaults_make_a_working_function() {
    let template = template();
    let defaults: Vec<(String, String)> = environment(&template)
        .into_iter()
        .filter(|(variable, _)| variable != "DATABASE_URL")
        .map(|(variable, parameter)| {
            let default = &template["Parameters"][parameter.as_str()]["Default"];
            let value = match default {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                other => panic!("{parameter} has no scalar default: {other:?}"),
            };
            (variable, value)
        })
        .collect();
    assert!(defaults.iter().any(|(_, value)| value.is_empty()), "some settings default to empty (library default)");
    let env: Vec<(&str, &str)> = defaults.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();

    let orders = OrdersEnv::start(&env).await;
    let created = orders.api.invoke(post_valid_order("tea", 1)).await;
    assert_eq!(status(created.response()), 201, "{:?}\n{}", created.outcome, orders.function.output());
    assert_eq!(body(created.response())["item"], "tea");
}

#[test]
fn reserved_concurrency_is_the_connection_slots_divided_by_the_pool_size() {
    let template = template();
    let budget = template["Mappings"]["ConnectionBudget"].as_mapping().expect("Mappings.ConnectionBudget");
    let pool_sizes = str_list(&template["Parameters"]["DbPoolSize"]["AllowedValues"]);

    for (name, function) in resources_of_type(&template, "AWS::Serverless::Function") {
        let properties = &function["Properties"];
        let lookup = tagged(&properties["ReservedConcurrentExecutions"], "FindInMap")
            .unwrap_or_else(|| panic!("{name}: ReservedConcurrentExecutions is not a !FindInMap"));
        assert_eq!(lookup[0], "ConnectionBudget", "{name}");
        let slots_parameter = ref_name(&lookup[1]);
        assert_eq!(ref_name(&lookup[2]), "DbPoolSize", "{name}");
        assert!(slots_parameter.ends_with("ConnectionSlots"), "{name} is capped by {slots_parameter}");

        for slots in str_list(&template["Parameters"][slots_parameter]["AllowedValues"]) {
            let row = budget
                .get(slots.as_str())
                .unwrap_or_else(|| panic!("{slots_parameter}={slots} has no ConnectionBudget row"));
            for pool in &pool_sizes {
                let environments = row[pool.as_str()]
                    .as_u64()
                    .unwrap_or_else(|| panic!("ConnectionBudget[{slots}][{pool}] is missing or not a number"));
                let expected = slots.parse::<u64>().expect("slots") / pool.parse::<u64>().expect("pool size");
                assert_eq!(environments, expected, "ConnectionBudget[{slots}][{pool}] must be {slots} / {pool}");
                assert!(environments >= 2, "ConnectionBudget[{slots}][{pool}] is below 2 (SQS's minimum)");
            }
        }

        for (event, definition) in properties["Events"].as_mapping().into_iter().flatten() {
            if definition["Type"] == "SQS" {
                let scaling = &definition["Properties"]["ScalingConfig"]["MaximumConcurrency"];
                assert_eq!(
                    scaling, &properties["ReservedConcurrentExecutions"],
                    "{name}.{event:?} polls within the cap"
                );
                assert_eq!(str_list(&definition["Properties"]["FunctionResponseTypes"]), ["ReportBatchItemFailures"]);
            }
        }
    }
}

/// The dashboard's JSON, with every `${…}` replaced by its name.
fn dashboard(template: &Value) -> serde_json::Value {
    let (_, resource) =
        resources_of_type(template, "AWS::CloudWatch::Dashboard").into_iter().next().expect("a dashboard");
    let body = tagged(&resource["Properties"]["DashboardBody"], "Sub")
        .and_then(Value::as_str)
        .expect("DashboardBody is a !Sub string");
    let mut plain = String::new();
    let mut rest = body;
    while let Some(start) = rest.find("${") {
        let end = start + rest[start..].find('}').expect("closed ${…}");
        plain.push_str(&rest[..start]);
        plain.push_str(&rest[start + 2..end]);
        rest = &rest[end + 1..];
    }
    plain.push_str(rest);
    serde_json::from_str(&plain).unwrap_or_else(|e| panic!("the dashboard body is not JSON ({e}):\n{plain}"))
}

#[tokio::test]
async fn the_dashboard_shows_every_adapter_metric_and_no_other() {
    let emitted = emitted_metric_names().await;
    let template = template();
    let dashboard = dashboard(&template);
    let mut shown = BTreeSet::new();
    for widget in dashboard["widgets"].as_array().expect("widgets") {
        for metric in widget["properties"]["metrics"].as_array().into_iter().flatten() {
            if metric[0] == "MetricsNamespace" {
                assert_eq!(metric[2], "function_name", "the adapter's dimension: {metric}");
                shown.insert(metric[1].as_str().expect("metric name").to_owned());
            }
        }
    }
    assert_eq!(shown, emitted, "the dashboard shows exactly what the code emits");
}

#[tokio::test]
async fn each_function_has_the_four_alarms() {
    let emitted = emitted_metric_names().await;
    let template = template();
    let alarms = resources_of_type(&template, "AWS::CloudWatch::Alarm");
    let metric_of = |alarm: &Value| -> Vec<(String, String, String)> {
        let properties = &alarm["Properties"];
        let single = properties["MetricName"].as_str().map(|name| {
            let namespace = match tagged(&properties["Namespace"], "Ref") {
                Some(_) => ref_name(&properties["Namespace"]).to_owned(),
                None => properties["Namespace"].as_str().expect("namespace").to_owned(),
            };
            let dimension = properties["Dimensions"][0]["Value"].clone();
            let function = tagged(&dimension, "Ref").and_then(Value::as_str).unwrap_or_default().to_owned();
            (namespace, name.to_owned(), function)
        });
        let queried = properties["Metrics"].as_sequence().into_iter().flatten().filter_map(|query| {
            let metric = &query["MetricStat"]["Metric"];
            let name = metric["MetricName"].as_str()?;
            let dimension = metric["Dimensions"][0]["Value"].clone();
            let function = tagged(&dimension, "Ref").and_then(Value::as_str).unwrap_or_default().to_owned();
            Some((ref_name(&metric["Namespace"]).to_owned(), name.to_owned(), function))
        });
        single.into_iter().chain(queried).collect()
    };

    for (name, _) in resources_of_type(&template, "AWS::Serverless::Function") {
        let on = |namespace: &str, metric: &str| {
            alarms
                .iter()
                .filter(|(_, alarm)| {
                    metric_of(alarm).iter().any(|(ns, m, f)| ns == namespace && m == metric && f == &name)
                })
                .map(|(id, alarm)| (id.clone(), *alarm))
                .collect::<Vec<_>>()
        };
        assert_eq!(on("MetricsNamespace", "PoolExhausted").len(), 1, "{name}: pool exhaustion alarm");
        assert_eq!(on("AWS/Lambda", "Errors").len(), 1, "{name}: function errors alarm");

        let warmup = on("MetricsNamespace", "WarmupDuration");
        assert_eq!(warmup.len(), 1, "{name}: warmup alarm");
        assert_eq!(warmup[0].1["Properties"]["ExtendedStatistic"], "p95", "{name}: on the warmup p95");

        let rate = on("MetricsNamespace", "ConnectFailures");
        assert_eq!(rate.len(), 1, "{name}: connect failure rate alarm");
        assert_eq!(rate[0].0, on("MetricsNamespace", "ConnectAttempts")[0].0, "{name}: failures over attempts");
        let expression = rate[0].1["Properties"]["Metrics"]
            .as_sequence()
            .and_then(|queries| queries.iter().find_map(|q| q["Expression"].as_str()))
            .expect("a metric math expression");
        assert!(expression.contains("failures") && expression.contains("/ attempts"), "{expression}");
    }

    for (id, alarm) in &alarms {
        for (namespace, metric, _) in metric_of(alarm) {
            if namespace == "MetricsNamespace" {
                assert!(emitted.contains(&metric), "{id} uses {metric}, which the adapter does not emit");
            }
        }
    }
}

/// `cargo lambda build`, which `sam build` runs, builds with `panic =
/// "abort"` unless the release profile sets `panic`: a handler's panic would
/// abort the environment instead of answering `RuntimeAdapter.HandlerPanicked`.
#[test]
fn the_release_profile_unwinds_panics_so_that_deployed_functions_answer_them() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../Cargo.toml");
    let manifest = std::fs::read_to_string(path).expect("the workspace's Cargo.toml");
    let release = manifest.split("[profile.release]").nth(1).expect("a [profile.release] section");
    let section = release.split("\n[").next().unwrap_or_default();
    let panic = section.lines().map(str::trim).find(|line| line.starts_with("panic")).expect("panic is set");
    assert_eq!(panic.replace(' ', ""), "panic=\"unwind\"", "{section}");
}
