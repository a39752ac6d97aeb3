//! Registration of orchestrations and activities by name, with typed (serde) inputs and outputs.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::Arc;

use futures::FutureExt;
use futures::future::{BoxFuture, LocalBoxFuture};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::entity::{EntityContext, EntityError, EntityFn};
use crate::error::{ActivityError, OrchestrationError, SERIALIZATION_ERROR};
use crate::history::OrchestrationInstance;
use crate::orchestration::OrchestrationContext;

/// Serializes a payload the DTF way: JSON text, with `null` stored as `None`.
pub fn to_payload<T: Serialize + ?Sized>(value: &T) -> Result<Option<String>, serde_json::Error> {
    let s = serde_json::to_string(value)?;
    Ok(if s == "null" { None } else { Some(s) })
}

/// Deserializes a payload; `None` reads as JSON `null`.
pub fn from_payload<T: DeserializeOwned>(payload: Option<&str>) -> Result<T, serde_json::Error> {
    serde_json::from_str(payload.unwrap_or("null"))
}

/// A type-erased orchestration: `(context, serialized input) -> serialized output`.
/// The returned future may be `!Send`: the replay engine drives it synchronously.
pub type OrchestrationFn = Arc<
    dyn Fn(
            OrchestrationContext,
            Option<String>,
        ) -> LocalBoxFuture<'static, Result<Option<String>, OrchestrationError>>
        + Send
        + Sync,
>;

/// A type-erased activity: `(context, serialized input) -> serialized output`.
pub type ActivityFn = Arc<
    dyn Fn(
            ActivityContext,
            Option<String>,
        ) -> BoxFuture<'static, Result<Option<String>, ActivityError>>
        + Send
        + Sync,
>;

/// What an activity knows about its invocation.
#[derive(Debug, Clone)]
pub struct ActivityContext {
    instance: OrchestrationInstance,
    name: String,
    task_id: i32,
}

impl ActivityContext {
    /// A context for activity `name` scheduled by `instance` as task `task_id`.
    pub fn new(instance: OrchestrationInstance, name: impl Into<String>, task_id: i32) -> Self {
        Self { instance, name: name.into(), task_id }
    }

    /// The scheduling orchestration.
    pub fn orchestration_instance(&self) -> &OrchestrationInstance {
        &self.instance
    }

    /// The scheduling orchestration's instance id.
    pub fn instance_id(&self) -> &str {
        &self.instance.instance_id
    }

    /// The activity name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The `TaskScheduled` event id.
    pub fn task_id(&self) -> i32 {
        self.task_id
    }
}

/// Orchestrations and activities known to a worker, by name (exact match).
#[derive(Clone, Default)]
pub struct Registry {
    orchestrations: HashMap<String, OrchestrationFn>,
    activities: HashMap<String, ActivityFn>,
    /// By lower-cased name (entity names are case-insensitive, as in DTF).
    entities: HashMap<String, EntityFn>,
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut o: Vec<_> = self.orchestrations.keys().collect();
        let mut a: Vec<_> = self.activities.keys().collect();
        let mut e: Vec<_> = self.entities.keys().collect();
        o.sort();
        a.sort();
        e.sort();
        f.debug_struct("Registry")
            .field("orchestrations", &o)
            .field("activities", &a)
            .field("entities", &e)
            .finish()
    }
}

impl Registry {
    /// A builder.
    pub fn builder() -> RegistryBuilder {
        RegistryBuilder::default()
    }

    /// The orchestration registered as `name`.
    pub fn orchestration(&self, name: &str) -> Option<&OrchestrationFn> {
        self.orchestrations.get(name)
    }

    /// The activity registered as `name`.
    pub fn activity(&self, name: &str) -> Option<&ActivityFn> {
        self.activities.get(name)
    }

    /// The entity registered as `name` (case-insensitive).
    pub fn entity(&self, name: &str) -> Option<&EntityFn> {
        self.entities.get(&name.to_lowercase())
    }
}

/// Builds a [`Registry`].
#[derive(Default)]
pub struct RegistryBuilder {
    inner: Registry,
}

impl fmt::Debug for RegistryBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.fmt(f)
    }
}

impl RegistryBuilder {
    /// Registers `f` as orchestration `name`: `async fn(OrchestrationContext, I) -> Result<O, OrchestrationError>`.
    /// A later registration under the same name replaces the earlier one.
    pub fn orchestration<I, O, F, Fut>(mut self, name: impl Into<String>, f: F) -> Self
    where
        I: DeserializeOwned + 'static,
        O: Serialize + 'static,
        F: Fn(OrchestrationContext, I) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<O, OrchestrationError>> + 'static,
    {
        let f = Arc::new(f);
        let erased: OrchestrationFn = Arc::new(move |ctx, input: Option<String>| {
            let f = Arc::clone(&f);
            async move {
                let input: I = from_payload(input.as_deref()).map_err(|e| {
                    OrchestrationError::with_type(
                        SERIALIZATION_ERROR,
                        format!("failed to deserialize the orchestration input: {e}"),
                    )
                })?;
                let out = f(ctx, input).await?;
                Ok(to_payload(&out)?)
            }
            .boxed_local()
        });
        self.inner.orchestrations.insert(name.into(), erased);
        self
    }

    /// Registers a type-erased orchestration.
    pub fn orchestration_fn(mut self, name: impl Into<String>, f: OrchestrationFn) -> Self {
        self.inner.orchestrations.insert(name.into(), f);
        self
    }

    /// Registers `f` as activity `name`: `async fn(ActivityContext, I) -> Result<O, ActivityError>`.
    pub fn activity<I, O, F, Fut>(mut self, name: impl Into<String>, f: F) -> Self
    where
        I: DeserializeOwned + Send + 'static,
        O: Serialize + Send + 'static,
        F: Fn(ActivityContext, I) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<O, ActivityError>> + Send + 'static,
    {
        let f = Arc::new(f);
        let erased: ActivityFn = Arc::new(move |ctx, input: Option<String>| {
            let f = Arc::clone(&f);
            async move {
                let input: I = from_payload(input.as_deref()).map_err(|e| {
                    ActivityError::with_type(
                        SERIALIZATION_ERROR,
                        format!("failed to deserialize the activity input: {e}"),
                    )
                    .into_non_retriable()
                })?;
                let out = f(ctx, input).await?;
                Ok(to_payload(&out)?)
            }
            .boxed()
        });
        self.inner.activities.insert(name.into(), erased);
        self
    }

    /// Registers a type-erased activity.
    pub fn activity_fn(mut self, name: impl Into<String>, f: ActivityFn) -> Self {
        self.inner.activities.insert(name.into(), f);
        self
    }

    /// Registers `f` as entity `name` (case-insensitive) with state `S`:
    /// `fn(&mut EntityContext<S>) -> Result<R, EntityError>`, called once per operation. The
    /// state is loaded once per batch and saved once after it; an operation that fails or panics
    /// leaves it as it found it (so `S` is cloned before each operation).
    pub fn entity<S, R, F>(mut self, name: impl AsRef<str>, f: F) -> Self
    where
        S: Serialize + DeserializeOwned + Clone + Send + 'static,
        R: Serialize,
        F: Fn(&mut EntityContext<S>) -> Result<R, EntityError> + Send + Sync + 'static,
    {
        self.inner.entities.insert(name.as_ref().to_lowercase(), crate::entity::typed(f));
        self
    }

    /// Registers a type-erased entity.
    pub fn entity_fn(mut self, name: impl AsRef<str>, f: EntityFn) -> Self {
        self.inner.entities.insert(name.as_ref().to_lowercase(), f);
        self
    }

    /// The registry.
    pub fn build(self) -> Registry {
        self.inner
    }
}
