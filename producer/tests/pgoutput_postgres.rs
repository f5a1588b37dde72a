//! The pgoutput decoder against bytes produced by a real PostgreSQL: every message
//! kind Walbrook relies on, taken from `pg_logical_slot_get_binary_changes`, which
//! returns exactly the payloads the walsender streams.

use bytes::Bytes;
use walbrook_harness::PgServer;
use walbrook_producer::pgoutput::{ColumnValue, Message, OldKind, ReplicaIdentity, decode};

async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    client
}

/// Consumes and decodes everything the slot has.
async fn changes(client: &tokio_postgres::Client, slot: &str, publication: &str) -> Vec<Message> {
    client
        .query(
            "SELECT data FROM pg_logical_slot_get_binary_changes($1, NULL, NULL, \
             'proto_version', '1', 'publication_names', $2, 'messages', 'true')",
            &[&slot, &publication],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| decode(Bytes::from(row.get::<_, Vec<u8>>(0))).expect("decodes"))
        .collect()
}

fn text(value: &ColumnValue) -> &str {
    match value {
        ColumnValue::Text(bytes) => std::str::from_utf8(bytes).unwrap(),
        other => panic!("expected a text value, got {other:?}"),
    }
}

#[tokio::test]
async fn decodes_real_transactions() {
    let pg = PgServer::shared();
    let db = pg.fresh_database("pgoutput");
    let client = connect(&db.url()).await;
    let (slot, publication) = (db.slot_name(), db.publication_name());
    client
        .batch_execute(&format!(
            "CREATE TABLE items (id int PRIMARY KEY, name text, big text, price numeric(10,2));
             ALTER TABLE items ALTER COLUMN big SET STORAGE EXTERNAL;
             CREATE TABLE audit (id bigint, note text);
             ALTER TABLE audit REPLICA IDENTITY FULL;
             CREATE PUBLICATION {publication} FOR TABLE items, audit;"
        ))
        .await
        .unwrap();
    client
        .execute(
            "SELECT pg_create_logical_replication_slot($1, 'pgoutput')",
            &[&slot],
        )
        .await
        .unwrap();

    // 1. Insert, including a value large enough to be TOASTed out of line.
    client
        .batch_execute(
            "INSERT INTO items VALUES (1, 'first', (SELECT string_agg(md5(g::text), '') FROM generate_series(1, 400) g), 9.99), (2, NULL, 'small', NULL);",
        )
        .await
        .unwrap();
    let messages = changes(&client, &slot, &publication).await;
    let kinds: Vec<&str> = messages.iter().map(kind).collect();
    assert_eq!(kinds, ["begin", "relation", "insert", "insert", "commit"]);
    let Message::Begin(begin) = &messages[0] else {
        unreachable!()
    };
    let Message::Commit(commit) = &messages[4] else {
        unreachable!()
    };
    assert_eq!(begin.final_lsn, commit.commit_lsn);
    assert!(commit.end_lsn > commit.commit_lsn);
    let Message::Relation(rel) = &messages[1] else {
        unreachable!()
    };
    assert_eq!(
        (rel.namespace.as_str(), rel.name.as_str()),
        ("public", "items")
    );
    assert_eq!(rel.replica_identity, ReplicaIdentity::Default);
    let names: Vec<&str> = rel.columns.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["id", "name", "big", "price"]);
    assert!(rel.columns[0].is_key && !rel.columns[1].is_key);
    assert_eq!(rel.columns[3].type_oid.0, 1700);
    assert_eq!(rel.columns[3].type_modifier, (10 << 16) + 2 + 4);
    let Message::Insert(first) = &messages[2] else {
        unreachable!()
    };
    assert_eq!(text(&first.new.0[0]), "1");
    assert_eq!(text(&first.new.0[2]).len(), 32 * 400);
    assert_eq!(text(&first.new.0[3]), "9.99");
    let Message::Insert(second) = &messages[3] else {
        unreachable!()
    };
    assert_eq!(second.new.0[1], ColumnValue::Null);

    // 2. An update that leaves the TOASTed column alone, and one that changes the key.
    client
        .batch_execute(
            "UPDATE items SET name = 'renamed' WHERE id = 1;
             UPDATE items SET id = 20 WHERE id = 2;",
        )
        .await
        .unwrap();
    let messages = changes(&client, &slot, &publication).await;
    let updates: Vec<_> = messages
        .iter()
        .filter_map(|m| match m {
            Message::Update(u) => Some(u),
            _ => None,
        })
        .collect();
    assert_eq!(updates.len(), 2);
    assert!(updates[0].old.is_none(), "key unchanged: no old tuple");
    assert_eq!(text(&updates[0].new.0[1]), "renamed");
    assert!(
        matches!(updates[0].new.0[2], ColumnValue::UnchangedToast),
        "an unchanged TOASTed value is marked, not sent"
    );
    let old_key = updates[1].old.as_ref().expect("key changed: old key sent");
    assert_eq!(old_key.kind, OldKind::Key);
    assert_eq!(text(&old_key.tuple.0[0]), "2");
    assert_eq!(text(&updates[1].new.0[0]), "20");

    // 3. REPLICA IDENTITY FULL: updates and deletes carry the whole old row.
    client
        .batch_execute(
            "INSERT INTO audit VALUES (7, 'a');
             UPDATE audit SET note = 'b';
             DELETE FROM audit;",
        )
        .await
        .unwrap();
    let messages = changes(&client, &slot, &publication).await;
    let Some(Message::Relation(audit)) =
        messages.iter().find(|m| matches!(m, Message::Relation(_)))
    else {
        panic!("no relation message for audit")
    };
    assert_eq!(audit.replica_identity, ReplicaIdentity::Full);
    assert!(
        audit.columns.iter().all(|c| c.is_key),
        "FULL marks every column as key"
    );
    let update = messages.iter().find_map(|m| match m {
        Message::Update(u) => Some(u),
        _ => None,
    });
    let old = update.unwrap().old.as_ref().unwrap();
    assert_eq!(old.kind, OldKind::Full);
    assert_eq!(text(&old.tuple.0[1]), "a");
    let delete = messages.iter().find_map(|m| match m {
        Message::Delete(d) => Some(d),
        _ => None,
    });
    let delete = delete.unwrap();
    assert_eq!(delete.old.kind, OldKind::Full);
    assert_eq!(text(&delete.old.tuple.0[1]), "b");

    // 4. Delete by key, a multi-table truncate, and a logical message.
    client
        .batch_execute(
            "DELETE FROM items WHERE id = 20;
             TRUNCATE items, audit RESTART IDENTITY;
             SELECT pg_logical_emit_message(true, 'walbrook', 'heartbeat');",
        )
        .await
        .unwrap();
    let messages = changes(&client, &slot, &publication).await;
    let delete = messages.iter().find_map(|m| match m {
        Message::Delete(d) => Some(d),
        _ => None,
    });
    let delete = delete.unwrap();
    assert_eq!(delete.old.kind, OldKind::Key);
    assert_eq!(text(&delete.old.tuple.0[0]), "20");
    assert_eq!(
        delete.old.tuple.0[1],
        ColumnValue::Null,
        "non-key columns are NULL"
    );
    let truncate = messages.iter().find_map(|m| match m {
        Message::Truncate(t) => Some(t),
        _ => None,
    });
    let truncate = truncate.unwrap();
    assert_eq!(truncate.relations.len(), 2);
    assert!(truncate.restart_identity && !truncate.cascade);
    let message = messages.iter().find_map(|m| match m {
        Message::LogicalMessage(l) => Some(l),
        _ => None,
    });
    let message = message.unwrap();
    assert!(message.transactional);
    assert_eq!(message.prefix, "walbrook");
    assert_eq!(&message.content[..], b"heartbeat");
}

fn kind(message: &Message) -> &'static str {
    match message {
        Message::Begin(_) => "begin",
        Message::Commit(_) => "commit",
        Message::Origin(_) => "origin",
        Message::Relation(_) => "relation",
        Message::Type(_) => "type",
        Message::Insert(_) => "insert",
        Message::Update(_) => "update",
        Message::Delete(_) => "delete",
        Message::Truncate(_) => "truncate",
        Message::LogicalMessage(_) => "message",
    }
}
