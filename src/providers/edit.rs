//! Changing providers: what a client sends, its checks, and creating,
//! updating and deleting records (an M3U import names its provider too).

use serde::Deserialize;

use super::{key_of, Provider, ProviderError, Providers, IMPLICIT_PREFIX, MAX_CONNECTIONS_LIMIT};
use crate::catalog::Stream;

/// What a client sends to create or change a provider. `maxConnections`
/// absent keeps the current limit; `null` removes it.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProviderInput {
    pub id: Option<String>,
    pub name: Option<String>,
    #[serde(default, deserialize_with = "present")]
    pub max_connections: Option<Option<u32>>,
    // Accepted (and ignored) so a GET result can be PUT back unchanged.
    #[serde(default)]
    pub implicit: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    pub host: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    pub streams: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    pub connections: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    pub created_at: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    pub updated_at: Option<serde::de::IgnoredAny>,
}

/// A field that is present (even as `null`) is `Some`.
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<u32>>, D::Error> {
    Option::<u32>::deserialize(d).map(Some)
}

impl Providers {
    /// Creates an explicit provider (id from the input or the name).
    pub async fn create(&self, input: ProviderInput) -> Result<Provider, ProviderError> {
        let name = input.name.clone().unwrap_or_default();
        check_name(&name)?;
        let id = match &input.id {
            Some(id) => id.clone(),
            None => crate::catalog::slugify(&name),
        };
        check_id(&id)?;
        let max = check_limit(input.max_connections.flatten())?;
        let now = crate::catalog::now_rfc3339();
        self.store
            .mutate(move |records| {
                if records.iter().any(|p| p.id == id) {
                    return Err(ProviderError::Conflict(id));
                }
                let p = Provider {
                    id,
                    name,
                    max_connections: max,
                    implicit: false,
                    created_at: now.clone(),
                    updated_at: now,
                };
                records.push(p.clone());
                Ok(p)
            })
            .await
    }

    /// Changes a provider: an explicit one's name and limit, or an implicit
    /// one's (`known` says whether the catalog has streams of that id).
    pub async fn update(
        &self,
        id: &str,
        input: ProviderInput,
        streams: &[Stream],
    ) -> Result<Provider, ProviderError> {
        if let Some(body_id) = &input.id {
            if body_id != id {
                return Err(ProviderError::Invalid(format!(
                    "id in the body ('{body_id}') differs from the path ('{id}')"
                )));
            }
        }
        if let Some(n) = &input.name {
            check_name(n)?;
        }
        let max = match input.max_connections {
            Some(m) => Some(check_limit(m)?),
            None => None,
        };
        // An implicit provider not stored yet is made from the catalog.
        let implicit_host = streams
            .iter()
            .filter(|s| s.provider.is_none())
            .filter_map(|s| key_of(&s.url))
            .find(|k| k.id() == id)
            .map(|k| k.host_port());
        let (id, name, now) = (id.to_string(), input.name, crate::catalog::now_rfc3339());
        self.store
            .mutate(move |records| {
                if let Some(p) = records.iter_mut().find(|p| p.id == id) {
                    if let Some(n) = name {
                        p.name = n;
                    }
                    if let Some(m) = max {
                        p.max_connections = m;
                    }
                    p.updated_at = now;
                    return Ok(p.clone());
                }
                let host = implicit_host.ok_or_else(|| ProviderError::NotFound(id.clone()))?;
                let p = Provider {
                    id,
                    name: name.unwrap_or(host),
                    max_connections: max.flatten(),
                    implicit: true,
                    created_at: now.clone(),
                    updated_at: now,
                };
                records.push(p.clone());
                Ok(p)
            })
            .await
    }

    /// Deletes an explicit provider no stream uses, or the stored limit of
    /// an implicit one (it has none again).
    pub async fn delete(&self, id: &str, streams: &[Stream]) -> Result<(), ProviderError> {
        let users = streams
            .iter()
            .filter(|s| s.provider.as_deref() == Some(id))
            .count();
        let id = id.to_string();
        self.store
            .mutate(move |records| {
                let p = records
                    .iter()
                    .find(|p| p.id == id)
                    .ok_or_else(|| ProviderError::NotFound(id.clone()))?;
                if !p.implicit && users > 0 {
                    return Err(ProviderError::InUse(id, users));
                }
                records.retain(|p| p.id != id);
                Ok(())
            })
            .await
    }

    /// The provider an import names (`provider` as an id, or an object):
    /// an id must exist; an object creates the provider or updates the
    /// name and limit it gives. Returns the id.
    pub async fn for_import(&self, spec: ImportProvider) -> Result<String, ProviderError> {
        match spec {
            ImportProvider::Id(id) => {
                if self.exists(&id) {
                    Ok(id)
                } else {
                    Err(ProviderError::NotFound(id))
                }
            }
            ImportProvider::Spec(input) => {
                let id = input
                    .id
                    .clone()
                    .ok_or_else(|| ProviderError::Invalid("provider.id is required".into()))?;
                if self.exists(&id) {
                    self.update(&id, input, &[]).await.map(|p| p.id)
                } else {
                    self.create(input).await.map(|p| p.id)
                }
            }
        }
    }
}

/// `provider` of an M3U import: an id, or `{id, name, maxConnections}`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum ImportProvider {
    Id(String),
    Spec(ProviderInput),
}

fn check_id(id: &str) -> Result<(), ProviderError> {
    if !crate::catalog::valid_id(id) {
        return Err(ProviderError::Invalid(
            "id must be 1-64 characters of A-Z, a-z, 0-9, '_' or '-'".into(),
        ));
    }
    if id.starts_with(IMPLICIT_PREFIX) {
        return Err(ProviderError::Invalid(format!(
            "ids starting with '{IMPLICIT_PREFIX}' are those of implicit providers"
        )));
    }
    Ok(())
}

fn check_name(name: &str) -> Result<(), ProviderError> {
    if name.trim().is_empty()
        || name.chars().count() > crate::catalog::MAX_NAME_LEN
        || name.chars().any(|c| c.is_control())
    {
        return Err(ProviderError::Invalid(format!(
            "name must be 1-{} printable characters",
            crate::catalog::MAX_NAME_LEN
        )));
    }
    Ok(())
}

fn check_limit(max: Option<u32>) -> Result<Option<u32>, ProviderError> {
    match max {
        Some(m) if !(1..=MAX_CONNECTIONS_LIMIT).contains(&m) => Err(ProviderError::Invalid(
            format!("maxConnections must be 1-{MAX_CONNECTIONS_LIMIT}, or null for no limit"),
        )),
        m => Ok(m),
    }
}
