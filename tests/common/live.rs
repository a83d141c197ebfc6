//! Strict validation against the vendored GPT-Live JSON Schemas (`spec/gpt-live-*.schema.json`,
//! generated from openai-python 3.57.0). The generated schemas leave every object open
//! (`additionalProperties: true`, pydantic's `extra="allow"`); the server's session config is
//! strict (brief §2.1: "rejects unknown fields"), so every object schema that lists its
//! properties is closed here and a misnamed field fails.

use std::collections::HashMap;

use serde_json::{json, Value};

fn close_objects(v: &mut Value) {
    match v {
        Value::Object(m) => {
            if m.contains_key("properties") {
                m.insert("additionalProperties".into(), Value::Bool(false));
            }
            for (_, child) in m.iter_mut() {
                close_objects(child);
            }
        }
        Value::Array(a) => a.iter_mut().for_each(close_objects),
        _ => {}
    }
}

/// One direction's schema: a validator per event `type` (from `x-discriminator.mapping`).
pub struct LiveSchema {
    by_type: HashMap<String, jsonschema::Validator>,
}

impl LiveSchema {
    fn load(file: &str) -> LiveSchema {
        let path = super::spec_dir().join(file);
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!(
                "the GPT-Live schema must be at {} (vendored, see spec/README.md): {e}",
                path.display()
            )
        });
        let mut doc: Value = serde_json::from_str(&text).expect("schema is JSON");
        close_objects(&mut doc);
        let mapping = doc["x-discriminator"]["mapping"]
            .as_object()
            .expect("x-discriminator.mapping")
            .clone();
        let defs = doc["$defs"].take();
        let mut by_type = HashMap::new();
        for (ty, r) in mapping {
            let root = json!({"$defs": defs, "$ref": r});
            let v = jsonschema::options()
                .with_draft(jsonschema::Draft::Draft202012)
                .build(&root)
                .expect("schema compiles");
            by_type.insert(ty, v);
        }
        LiveSchema { by_type }
    }

    /// The validation errors of `instance` (an unknown `type` is an error too).
    pub fn errors(&self, instance: &Value) -> Vec<String> {
        let Some(ty) = instance["type"].as_str() else {
            return vec!["no type".into()];
        };
        let Some(v) = self.by_type.get(ty) else {
            return vec![format!("no event type {ty:?} in the union")];
        };
        v.iter_errors(instance)
            .map(|e| format!("{} at {}", e, e.instance_path()))
            .collect()
    }

    /// Panics with the errors unless `instance` is valid.
    pub fn assert_valid(&self, instance: &Value) {
        let errs = self.errors(instance);
        assert!(errs.is_empty(), "rejects {instance}:\n{}", errs.join("\n"));
    }
}

/// Both directions.
pub struct LiveSchemas {
    /// `ClientEvent`.
    pub client: LiveSchema,
    /// `ServerEvent`.
    pub server: LiveSchema,
}

impl LiveSchemas {
    /// Loads both vendored schemas; panics when missing.
    pub fn load() -> LiveSchemas {
        LiveSchemas {
            client: LiveSchema::load("gpt-live-client-events.schema.json"),
            server: LiveSchema::load("gpt-live-server-events.schema.json"),
        }
    }

    /// A client event as the bridge must write it: valid against the strict schema, and with
    /// no `null` except the required-nullable `delegation_id` (brief §9: omit unset optional
    /// fields; the SDK serialises with `exclude_unset`).
    pub fn assert_client_event(&self, instance: &Value) {
        self.client.assert_valid(instance);
        assert_no_nulls(instance, "", instance);
    }
}

fn assert_no_nulls(v: &Value, path: &str, whole: &Value) {
    match v {
        Value::Object(m) => {
            for (k, c) in m {
                if c.is_null() && !(path.is_empty() && k == "delegation_id") {
                    panic!("null at {path}/{k} (omit unset fields): {whole}");
                }
                assert_no_nulls(c, &format!("{path}/{k}"), whole);
            }
        }
        Value::Array(a) => a
            .iter()
            .enumerate()
            .for_each(|(i, c)| assert_no_nulls(c, &format!("{path}/{i}"), whole)),
        _ => {}
    }
}

/// The vendored example events (`spec/gpt-live-example-events.json`).
pub fn examples() -> Value {
    let path = super::spec_dir().join("gpt-live-example-events.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{} must be vendored: {e}", path.display()));
    serde_json::from_str(&text).expect("examples are JSON")
}
