//! Which instance-id characters the table service refuses once escaped as DTF escapes them
//! (`validate_instance_id` refuses exactly those), and rows of ids with `/ \ # ?` as other tools
//! see them.

use crate::support::{TestHub, account, provider, test_settings};
use durabletask_azure_storage::keys::{escape_partition_key, unescape_partition_key};
use durabletask_azure_storage::storage::AzureStorage;
use durabletask_azure_storage::storage::{
    BatchOp, EdmValue, StorageErrorKind, TableEntity, TableStore, WriteMode,
};
use durabletask_core::OrchestrationService;
use durabletask_core::{StartOptions, TaskHubClient, validate_instance_id};
use std::time::Duration;

/// Probes insert, point read and filtered query of an escaped key with each candidate character:
/// the service refuses U+2028 and U+2029 (and nothing else the escaping lets through), and those
/// are exactly the characters `validate_instance_id` refuses besides control characters.
#[tokio::test]
async fn table_service_refuses_exactly_what_validation_refuses() {
    let Some(hub) = TestHub::new("instance_ids::table_chars", 1) else { return };
    let s = &hub.storage;
    let t = &hub.names.instances_table;
    s.create_table_if_not_exists(t).await.unwrap();
    let mut candidates: Vec<char> =
        (0u32..0x20).chain(0x7F..0xA0).filter_map(char::from_u32).collect();
    candidates.extend([
        '/',
        '\\',
        '#',
        '?',
        '^',
        '\'',
        '"',
        '%',
        '+',
        ' ',
        '~',
        '&',
        '=',
        '*',
        '.',
        ':',
        '@',
        '\u{A0}',
        '\u{AD}',
        '\u{200B}',
        '\u{200E}',
        '\u{2028}',
        '\u{2029}',
        '\u{202E}',
        '\u{2060}',
        '\u{3000}',
        '\u{D7FF}',
        '\u{E000}',
        '\u{FEFF}',
        '\u{FFFD}',
        '\u{FFFE}',
        '\u{FFFF}',
        '\u{10000}',
        '\u{1F600}',
        '\u{10FFFF}',
        'é',
        'ß',
        '中',
    ]);
    let mut refused = Vec::new();
    for (i, c) in candidates.iter().enumerate() {
        let id = format!("k{i}{c}z");
        let pk = escape_partition_key(&id);
        assert_eq!(unescape_partition_key(&pk), id);
        let insert = s
            .write(
                t,
                BatchOp {
                    mode: WriteMode::Insert,
                    entity: TableEntity::new(pk.clone(), "").with("V", EdmValue::Int32(1)),
                },
            )
            .await;
        let ok = match insert {
            Ok(_) => {
                let read = s.get_entity(t, &pk, "").await;
                let filter = format!("PartitionKey eq '{}'", pk.replace('\'', "''"));
                let query = s.query(t, Some(&filter), None, None, None).await;
                match (read, query) {
                    (Ok(Some(_)), Ok(page)) if page.entities.len() == 1 => true,
                    (r, q) => panic!("{c:?}: inserted but read {r:?} / query {q:?}"),
                }
            }
            Err(e) if e.kind() == StorageErrorKind::InvalidInput => false,
            Err(e) => panic!("{c:?}: unexpected {e:?}"),
        };
        if !ok {
            refused.push(*c);
        }
        let valid = validate_instance_id(&id).is_ok();
        if c.is_control() {
            assert!(ok, "{c:?}: control characters are escaped, so storable");
            assert!(!valid, "{c:?}: control characters stay forbidden in ids");
        } else {
            assert_eq!(valid, ok, "{c:?}: validation agrees with the table service");
        }
    }
    assert_eq!(refused, ['\u{2028}', '\u{2029}'], "what the table service refused");
    s.delete_table_if_exists(t).await.unwrap();
}

/// Rows of ids with `/ \ # ?` carry the DTF-escaped PartitionKey, as the .NET tools and the
/// Azure CLI read them.
#[tokio::test]
async fn special_character_rows_use_dtf_keys() {
    let Some(account) = account("instance_ids::special_rows") else { return };
    let svc = provider(&account, test_settings("instance_ids::special_rows", 4));
    svc.create_if_not_exists().await.unwrap();
    let client = TaskHubClient::new(std::sync::Arc::new(svc.clone()));
    let id = format!("x/{}\\y#z?", durabletask_core::new_execution_id());
    client
        .schedule_new_orchestration("Quick", &"in", StartOptions::with_instance_id(&id))
        .await
        .unwrap();
    let pk = escape_partition_key(&id);
    assert!(!pk.contains(['/', '\\', '#', '?']), "{pk}");
    let raw = AzureStorage::new(&account, Duration::from_secs(30));
    let row = raw
        .get_entity(&svc.resource_names().instances_table, &pk, "")
        .await
        .unwrap()
        .expect("the row under the escaped key");
    assert_eq!(row.get_str("RuntimeStatus"), Some("Pending"));
    assert_eq!(unescape_partition_key(&row.partition_key), id);
    svc.delete().await.unwrap();
}
