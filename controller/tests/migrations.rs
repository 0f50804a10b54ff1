//! The schema migrations on a real file: applied to an empty database, idempotent on reopen.

use ferric_controller::fsm::ProvisionState;
use ferric_controller::model::Node;
use ferric_controller::store::{NodeQuery, Store, StoreError, MIGRATIONS};

fn table_names(path: &std::path::Path) -> Vec<String> {
    let connection = rusqlite::Connection::open(path).unwrap();
    let mut statement = connection
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name")
        .unwrap();
    statement.query_map([], |row| row.get(0)).unwrap().map(Result::unwrap).collect()
}

#[tokio::test]
async fn migrations_create_the_schema_and_reopening_keeps_the_data() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ferric.sqlite");

    let store = Store::open(&path).unwrap();
    assert_eq!(store.schema_version().unwrap(), MIGRATIONS.len());
    assert_eq!(table_names(&path), ["node_history", "node_inventory", "nodes", "ports"]);
    let node = Node::new(
        "0c7e1a1e-5c3f-4f7b-9a5e-3f1f6f0f2a11".into(),
        "ipmi".into(),
        ProvisionState::Enroll,
        "2024-01-01T00:00:00.000000+00:00".into(),
    );
    let stored = node.clone();
    store.run(move |tx| tx.insert_node(&stored)).await.unwrap();
    drop(store);

    let reopened = Store::open(&path).unwrap();
    assert_eq!(reopened.schema_version().unwrap(), MIGRATIONS.len());
    let nodes = reopened.run(|tx| tx.list_nodes(&NodeQuery::default())).await.unwrap();
    assert_eq!(nodes, vec![node]);
}

#[test]
fn a_database_from_a_newer_controller_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ferric.sqlite");
    let connection = rusqlite::Connection::open(&path).unwrap();
    connection.pragma_update(None, "user_version", MIGRATIONS.len() as i64 + 1).unwrap();
    drop(connection);
    assert!(matches!(Store::open(&path), Err(StoreError::SchemaTooNew { .. })));
}
