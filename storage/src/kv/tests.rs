//! Tests of both engines through the traits, sled-only behaviour (reopen, corruption, flush),
//! and a proptest holding `SledStore` and `MemoryStore` to the same behaviour.

use super::*;
use crate::record;
use proptest::prelude::*;
use tempfile::TempDir;

fn message(topic: &str, payload: &[u8]) -> StoredMessage {
    StoredMessage {
        topic: topic.to_owned(),
        payload: payload.to_vec(),
        qos: 1,
        retain: true,
        properties: StoredProperties {
            payload_format_indicator: Some(1),
            message_expiry_at_unix_ms: Some(1_700_000_000_000),
            response_topic: Some("reply/to".into()),
            correlation_data: Some(vec![9, 8]),
            user_properties: vec![("k".into(), "v".into()), ("k".into(), "w".into())],
            content_type: Some("application/json".into()),
        },
    }
}

fn session(client_id: &str, filters: &[&str]) -> StoredSession {
    StoredSession {
        client_id: client_id.to_owned(),
        protocol_level: 5,
        expiry_secs: 7200,
        disconnected_at_unix_ms: Some(1_700_000_000_000),
        subscriptions: filters
            .iter()
            .enumerate()
            .map(|(i, f)| StoredSubscription {
                filter: (*f).to_owned(),
                qos: 1,
                no_local: i % 2 == 0,
                retain_as_published: true,
                retain_handling: 2,
                subscription_id: Some(i as u32 + 1),
            })
            .collect(),
        awaiting_rel: vec![7, 65535],
        pending_will: Some(StoredWill {
            message: message("will/t", b"gone"),
            publish_at_unix_ms: 1_700_000_030_000,
        }),
        owner: Some(Some("alice".to_owned())),
    }
}

#[test]
fn version_1_session_records_still_load_and_new_ones_keep_the_qos2_ids_and_the_will() {
    /// The version 1 layout, as a build before `awaiting_rel` wrote it.
    #[derive(serde::Serialize)]
    struct V1<'a> {
        client_id: &'a str,
        protocol_level: u8,
        expiry_secs: u32,
        disconnected_at_unix_ms: Option<u64>,
        subscriptions: &'a [StoredSubscription],
    }
    let full = session("c1", &["a/#", "$share/g/b"]);
    let old = record::encode(&V1 {
        client_id: &full.client_id,
        protocol_level: full.protocol_level,
        expiry_secs: full.expiry_secs,
        disconnected_at_unix_ms: full.disconnected_at_unix_ms,
        subscriptions: &full.subscriptions,
    })
    .unwrap();
    assert_eq!(old[0], 1);
    let back = StoredSession::decode_record(&old).unwrap();
    assert_eq!(back.subscriptions, full.subscriptions);
    assert!(back.awaiting_rel.is_empty() && back.pending_will.is_none());
    assert_eq!(back.owner, None, "a version 1 session has no known owner");

    let dir = TempDir::new().unwrap();
    let store = sled_store(&dir);
    store.put_session(&full).unwrap();
    drop(store);
    let store = sled_store(&dir);
    assert_eq!(store.load_sessions().unwrap(), vec![full]);
    assert!(StoredSession::decode_record(&[9, 0]).is_err());
}

fn pending(seq: u64) -> StoredPending {
    StoredPending {
        seq,
        message: message(&format!("q/{seq}"), &seq.to_be_bytes()),
        qos: 1,
        packet_id: None,
        state: PendingState::Queued,
        subscription_id: None,
        more_subscription_ids: Vec::new(),
    }
}

#[test]
fn version_1_pending_records_still_load_and_new_ones_keep_every_subscription_id() {
    /// The version 1 layout, as a build before merged subscription ids wrote it.
    #[derive(serde::Serialize)]
    struct V1<'a> {
        seq: u64,
        message: &'a StoredMessage,
        qos: u8,
        packet_id: Option<u16>,
        state: PendingState,
        subscription_id: Option<u32>,
    }
    let mut full = pending(7);
    full.subscription_id = Some(3);
    let old = record::encode(&V1 {
        seq: full.seq,
        message: &full.message,
        qos: full.qos,
        packet_id: full.packet_id,
        state: full.state,
        subscription_id: full.subscription_id,
    })
    .unwrap();
    assert_eq!(old[0], 1);
    assert_eq!(StoredPending::decode_record(&old).unwrap(), full);

    // Written by a build before this one, read back by this one.
    let dir = TempDir::new().unwrap();
    let store = sled_store(&dir);
    store
        .raw_tree(keys::PENDING)
        .insert(keys::pending_key("c1", 7).unwrap(), old)
        .unwrap();
    assert_eq!(store.load_pending("c1").unwrap(), vec![full.clone()]);

    full.seq = 8;
    full.more_subscription_ids = vec![5, 9];
    store.push_pending("c1", &full).unwrap();
    drop(store);
    let store = sled_store(&dir);
    assert_eq!(store.load_pending("c1").unwrap()[1], full);
    assert!(StoredPending::decode_record(&[9, 0]).is_err());
}

fn sled_store(dir: &TempDir) -> SledStore {
    SledStore::open(dir.path().join("kv"), SledOptions::default()).unwrap()
}

/// Runs `check` against a `MemoryStore` and a `SledStore`.
fn with_both_stores(check: impl Fn(&dyn Stores)) {
    check(&MemoryStore::new());
    let dir = TempDir::new().unwrap();
    check(&sled_store(&dir));
}

/// Both traits at once, so tests can take one `&dyn`.
trait Stores: RetainedStore + SessionStore {}
impl<T: RetainedStore + SessionStore> Stores for T {}

fn seqs(p: &[StoredPending]) -> Vec<u64> {
    p.iter().map(|p| p.seq).collect()
}

#[test]
fn retained_messages_are_put_loaded_replaced_and_removed_in_both_stores() {
    with_both_stores(|s| {
        assert!(s.is_empty());
        s.put(&message("b/1", b"one")).unwrap();
        s.put(&message("a/1", b"two")).unwrap();
        s.put(&message("b/1", b"three")).unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(
            s.load_all().unwrap(),
            vec![message("a/1", b"two"), message("b/1", b"three")]
        );
        s.remove("a/1").unwrap();
        s.remove("not/there").unwrap();
        assert_eq!(s.len(), 1);
        assert_eq!(s.load_all().unwrap(), vec![message("b/1", b"three")]);
    });
}

#[test]
fn sessions_are_put_loaded_replaced_and_removed_with_their_pending_in_both_stores() {
    with_both_stores(|s| {
        s.put_session(&session("dev-2", &["a/#"])).unwrap();
        s.put_session(&session("dev-1", &["x/+", "y"])).unwrap();
        s.put_session(&session("dev-2", &["b/#"])).unwrap();
        assert_eq!(
            s.load_sessions().unwrap(),
            vec![session("dev-1", &["x/+", "y"]), session("dev-2", &["b/#"])]
        );
        s.push_pending("dev-1", &pending(1)).unwrap();
        s.push_pending("dev-2", &pending(1)).unwrap();
        s.remove_session("dev-1").unwrap();
        s.remove_session("unknown").unwrap();
        assert_eq!(s.load_sessions().unwrap(), vec![session("dev-2", &["b/#"])]);
        assert!(s.load_pending("dev-1").unwrap().is_empty());
        assert_eq!(s.load_pending("dev-2").unwrap(), vec![pending(1)]);
    });
}

#[test]
fn pending_messages_load_in_seq_order_per_client_whatever_the_push_order() {
    with_both_stores(|s| {
        for seq in [300, 2, 256, 1, u64::MAX, 0] {
            s.push_pending("a", &pending(seq)).unwrap();
        }
        s.push_pending("ab", &pending(5)).unwrap();
        assert_eq!(
            seqs(&s.load_pending("a").unwrap()),
            vec![0, 1, 2, 256, 300, u64::MAX]
        );
        assert_eq!(seqs(&s.load_pending("ab").unwrap()), vec![5]);
        s.remove_pending("a", 2).unwrap();
        s.remove_pending("a", 999).unwrap();
        assert_eq!(
            seqs(&s.load_pending("a").unwrap()),
            vec![0, 1, 256, 300, u64::MAX]
        );
    });
}

#[test]
fn a_pending_state_update_changes_only_that_message_and_reports_a_missing_one() {
    with_both_stores(|s| {
        s.push_pending("c", &pending(1)).unwrap();
        s.push_pending("c", &pending(2)).unwrap();
        assert!(s
            .update_pending_state("c", 2, PendingState::AwaitPubRec, Some(7))
            .unwrap());
        assert!(s
            .update_pending_state("c", 2, PendingState::AwaitPubComp, Some(7))
            .unwrap());
        assert!(!s
            .update_pending_state("c", 3, PendingState::AwaitPubAck, Some(8))
            .unwrap());
        assert!(!s
            .update_pending_state("other", 1, PendingState::AwaitPubAck, Some(8))
            .unwrap());
        let loaded = s.load_pending("c").unwrap();
        assert_eq!(loaded[0], pending(1));
        assert_eq!(loaded[1].state, PendingState::AwaitPubComp);
        assert_eq!(loaded[1].packet_id, Some(7));
        assert_eq!(loaded[1].message, pending(2).message);
    });
}

#[test]
fn an_overlong_client_id_is_an_error_in_both_stores() {
    let long = "x".repeat(65_536);
    with_both_stores(|s| {
        assert!(matches!(
            s.push_pending(&long, &pending(1)),
            Err(KvError::ClientIdTooLong { .. })
        ));
        assert!(matches!(
            s.put_session(&session(&long, &[])),
            Err(KvError::ClientIdTooLong { .. })
        ));
    });
}

#[test]
fn a_reopened_sled_store_finds_everything_written_before_it_was_dropped() {
    let dir = TempDir::new().unwrap();
    {
        let s = sled_store(&dir);
        for i in 0..50 {
            s.put(&message(&format!("t/{i}"), &[i as u8])).unwrap();
        }
        s.remove("t/7").unwrap();
        s.put_session(&session("dev", &["a/#"])).unwrap();
        for seq in 0..10 {
            s.push_pending("dev", &pending(seq)).unwrap();
        }
        s.update_pending_state("dev", 3, PendingState::AwaitPubAck, Some(42))
            .unwrap();
        s.remove_pending("dev", 0).unwrap();
    }
    let s = sled_store(&dir);
    assert_eq!(s.len(), 49);
    let retained = s.load_all().unwrap();
    assert_eq!(retained.len(), 49);
    assert!(retained.iter().all(|m| m.topic != "t/7"));
    assert!(retained.contains(&message("t/49", &[49])));
    assert_eq!(s.load_sessions().unwrap(), vec![session("dev", &["a/#"])]);
    let p = s.load_pending("dev").unwrap();
    assert_eq!(seqs(&p), (1..10).collect::<Vec<_>>());
    assert_eq!(p[2].state, PendingState::AwaitPubAck);
    assert_eq!(p[2].packet_id, Some(42));
    assert_eq!(s.corrupt_records_skipped(), 0);
}

#[test]
fn corrupt_records_are_skipped_by_load_and_counted_never_a_panic() {
    let dir = TempDir::new().unwrap();
    let s = sled_store(&dir);
    s.put(&message("good", b"1")).unwrap();
    s.put_session(&session("good", &[])).unwrap();
    s.push_pending("good", &pending(1)).unwrap();
    s.push_pending("good", &pending(3)).unwrap();

    // Garbage, an unknown format version, a record under the wrong key, a malformed key.
    s.raw_tree(keys::RETAINED)
        .insert("bad", &[1, 0xff, 0xff, 0xff][..])
        .unwrap();
    s.raw_tree(keys::RETAINED)
        .insert("v9", &[9, 0][..])
        .unwrap();
    s.raw_tree(keys::SESSIONS).insert("bad", &[][..]).unwrap();
    s.raw_tree(keys::SESSIONS)
        .insert("other", record::encode(&session("good", &[])).unwrap())
        .unwrap();
    let bad_pending = keys::pending_key("good", 2).unwrap();
    s.raw_tree(keys::PENDING)
        .insert(bad_pending, &b"garbage"[..])
        .unwrap();
    let mut malformed = keys::pending_prefix("good").unwrap();
    malformed.push(1);
    s.raw_tree(keys::PENDING)
        .insert(malformed, record::encode(&pending(1)).unwrap())
        .unwrap();

    assert_eq!(s.load_all().unwrap(), vec![message("good", b"1")]);
    assert_eq!(s.corrupt_records_skipped(), 2);
    assert_eq!(s.load_sessions().unwrap(), vec![session("good", &[])]);
    assert_eq!(s.corrupt_records_skipped(), 4);
    assert_eq!(seqs(&s.load_pending("good").unwrap()), vec![1, 3]);
    assert_eq!(s.corrupt_records_skipped(), 6);
    // A single-record operation on a corrupt record reports it with its key.
    let err = s
        .update_pending_state("good", 2, PendingState::AwaitPubAck, Some(1))
        .unwrap_err();
    assert!(
        matches!(&err, KvError::Corrupt { tree: "pending", key, .. } if key == "\"good\"/2"),
        "{err}"
    );
    // Corrupt records still count in len (they take space) until removed.
    drop(s);
    let s = sled_store(&dir);
    assert_eq!(s.len(), 3);
    s.remove("bad").unwrap();
    s.remove("v9").unwrap();
    assert_eq!(s.len(), 1);
}

#[test]
fn flush_calls_sleds_flush_and_fsyncs_every_file_in_the_database_directory() {
    let dir = TempDir::new().unwrap();
    let s = sled_store(&dir);
    assert_eq!(s.flush_stats(), FlushStats::default());
    s.put(&message("a", b"1")).unwrap();
    s.flush().unwrap();
    let files = walk(s.dir());
    let stats = s.flush_stats();
    assert_eq!(stats.durable_flushes, 1);
    // Every file plus the directory itself (and any subdirectory).
    assert!(files.iter().any(|f| f.ends_with("db")), "{files:?}");
    assert!(
        stats.files_synced > files.len() as u64,
        "{stats:?} {files:?}"
    );
    s.flush().unwrap();
    assert_eq!(s.flush_stats().durable_flushes, 2);
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

#[test]
fn open_refuses_options_out_of_range_and_a_database_already_open() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("kv");
    let zero_cache = SledOptions {
        cache_capacity_bytes: 0,
        ..SledOptions::default()
    };
    assert!(matches!(
        SledStore::open(&path, zero_cache),
        Err(KvError::InvalidOption(_))
    ));
    let zero_interval = SledOptions {
        flush_every_ms: Some(0),
        ..SledOptions::default()
    };
    assert!(matches!(
        SledStore::open(&path, zero_interval),
        Err(KvError::InvalidOption(_))
    ));
    let _open = SledStore::open(&path, SledOptions::default()).unwrap();
    assert!(matches!(
        SledStore::open(&path, SledOptions::default()),
        Err(KvError::Engine(_))
    ));
}

// ---- SledStore and MemoryStore agree on random operation sequences ----

#[derive(Debug, Clone)]
enum Op {
    Put(usize, Vec<u8>),
    Remove(usize),
    PutSession(usize, u32),
    RemoveSession(usize),
    Push(usize, u64, u8),
    Update(usize, u64, u8, Option<u16>),
    RemovePending(usize, u64),
    Flush,
}

const TOPICS: [&str; 4] = ["a", "a/b", "b", "é/☃"];
const CLIENTS: [&str; 3] = ["c", "c1", ""];

fn state(n: u8) -> PendingState {
    match n % 4 {
        0 => PendingState::Queued,
        1 => PendingState::AwaitPubAck,
        2 => PendingState::AwaitPubRec,
        _ => PendingState::AwaitPubComp,
    }
}

fn op() -> impl Strategy<Value = Op> {
    let topic = 0..TOPICS.len();
    let client = || 0..CLIENTS.len();
    let seq = || prop_oneof![0u64..6, Just(u64::MAX), Just(256u64)];
    prop_oneof![
        (topic.clone(), proptest::collection::vec(any::<u8>(), 0..8))
            .prop_map(|(t, p)| Op::Put(t, p)),
        topic.prop_map(Op::Remove),
        (client(), any::<u32>()).prop_map(|(c, e)| Op::PutSession(c, e)),
        client().prop_map(Op::RemoveSession),
        (client(), seq(), any::<u8>()).prop_map(|(c, s, q)| Op::Push(c, s, q)),
        (client(), seq(), any::<u8>(), any::<Option<u16>>())
            .prop_map(|(c, s, st, p)| Op::Update(c, s, st, p)),
        (client(), seq()).prop_map(|(c, s)| Op::RemovePending(c, s)),
        Just(Op::Flush),
    ]
}

fn apply(s: &dyn Stores, op: &Op) -> Result<Option<bool>, String> {
    let r = match op {
        Op::Put(t, p) => s.put(&message(TOPICS[*t], p)).map(|()| None),
        Op::Remove(t) => s.remove(TOPICS[*t]).map(|()| None),
        Op::PutSession(c, e) => {
            let mut sess = session(CLIENTS[*c], &["x/#"]);
            sess.expiry_secs = *e;
            s.put_session(&sess).map(|()| None)
        }
        Op::RemoveSession(c) => s.remove_session(CLIENTS[*c]).map(|()| None),
        Op::Push(c, seq, q) => {
            let mut p = pending(*seq);
            p.qos = q % 3;
            p.message.payload.push(*q);
            s.push_pending(CLIENTS[*c], &p).map(|()| None)
        }
        Op::Update(c, seq, st, pid) => s
            .update_pending_state(CLIENTS[*c], *seq, state(*st), *pid)
            .map(Some),
        Op::RemovePending(c, seq) => s.remove_pending(CLIENTS[*c], *seq).map(|()| None),
        Op::Flush => s.flush().map(|()| None),
    };
    r.map_err(|e| e.to_string())
}

type Snapshot = (
    Vec<StoredMessage>,
    usize,
    Vec<StoredSession>,
    Vec<Vec<StoredPending>>,
);

fn snapshot(s: &dyn Stores) -> Snapshot {
    (
        s.load_all().unwrap(),
        s.len(),
        s.load_sessions().unwrap(),
        CLIENTS.iter().map(|c| s.load_pending(c).unwrap()).collect(),
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn sled_store_and_memory_store_agree_on_random_operation_sequences(
        ops in proptest::collection::vec(op(), 1..40)
    ) {
        let dir = TempDir::new().unwrap();
        let memory = MemoryStore::new();
        {
            let sled = SledStore::open(
                dir.path().join("kv"),
                SledOptions { flush_every_ms: None, ..SledOptions::default() },
            ).unwrap();
            for op in &ops {
                prop_assert_eq!(apply(&sled, op), apply(&memory, op), "{:?}", op);
            }
            prop_assert_eq!(snapshot(&sled), snapshot(&memory));
        }
        // And after a restart.
        let sled = SledStore::open(dir.path().join("kv"), SledOptions::default()).unwrap();
        prop_assert_eq!(snapshot(&sled), snapshot(&memory));
        prop_assert_eq!(sled.corrupt_records_skipped(), 0);
    }
}
