//! The proxy's async client (`ppn-tcb-client`) against a real `ppn-tcb`, and against sockets that
//! misbehave.

use ppn_conformance::HostedTcb;
use ppn_tcb_client::{ClientError, TcbClient};
use ppn_wire::ErrorCode;
use ppn_wire::message::{LenderRequest, NodeRequest};
use ppn_wire::{Request, Response};
use std::sync::Arc;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_calls_on_one_connection_each_get_their_own_answer() {
    let tcb = HostedTcb::start();
    let client = Arc::new(TcbClient::connect(&tcb.socket).await.expect("connect"));
    let identity = client.identity().await.expect("identity");
    let mut tasks = Vec::new();
    for task in 0..8 {
        let client = Arc::clone(&client);
        tasks.push(tokio::spawn(async move {
            for i in 0..50 {
                // Interleave three kinds so a mismatched answer shows as a kind error.
                match (task + i) % 3 {
                    0 => assert_eq!(client.identity().await.unwrap().node_id, identity.node_id),
                    1 => assert_eq!(client.public_keys().await.unwrap().node_id, identity.node_id),
                    _ => assert_eq!(client.status().await.unwrap().node_id, identity.node_id),
                }
            }
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    let status = client.status().await.unwrap();
    assert!(status.requests_served >= 401, "served {}", status.requests_served);
}

#[tokio::test]
async fn an_error_frame_becomes_a_typed_error() {
    let tcb = HostedTcb::start();
    let client = TcbClient::connect(&tcb.socket).await.unwrap();
    match client.call(&Request::Lender(LenderRequest::PoolStatus)).await {
        Err(ClientError::Tcb { code: ErrorCode::NotImplemented, detail }) => {
            assert!(detail.contains("lender"), "{detail}")
        }
        other => panic!("expected NotImplemented, got {other:?}"),
    }
    // A ledger refusal carries the ledger's own detail.
    let grantee = ppn_conformance::ledger::fresh_node_id();
    match client.issue_grant(grantee, ppn_wire::service::ResourceType::Vm, 1, 1).await {
        Err(ClientError::Tcb { code: ErrorCode::Rejected, detail }) => {
            assert_eq!(detail, "the grant would already be expired")
        }
        other => panic!("expected Rejected, got {other:?}"),
    }
    // The connection is still good.
    assert!(matches!(client.call(&Request::Node(NodeRequest::Status)).await, Ok(Response::Node(_))));
}

#[tokio::test]
async fn a_tcb_that_dies_fails_waiting_and_later_calls_with_closed() {
    let mut tcb = HostedTcb::start();
    let client = TcbClient::connect(&tcb.socket).await.unwrap().with_timeout(Duration::from_secs(5));
    client.status().await.unwrap();
    tcb.kill_hard();
    tokio::time::sleep(Duration::from_millis(100)).await;
    match client.status().await {
        Err(ClientError::Closed | ClientError::Io(_)) => {}
        other => panic!("expected a closed connection, got {other:?}"),
    }
}

#[tokio::test]
async fn a_silent_peer_times_out() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("silent.sock");
    let listener = tokio::net::UnixListener::bind(&path).unwrap();
    let server = tokio::spawn(async move {
        let (mut conn, _) = listener.accept().await.unwrap();
        let mut sink = Vec::new();
        // Read requests, never answer.
        let _ = tokio::io::AsyncReadExt::read_to_end(&mut conn, &mut sink).await;
    });
    let client = TcbClient::connect(&path).await.unwrap().with_timeout(Duration::from_millis(300));
    let start = std::time::Instant::now();
    match client.status().await {
        Err(ClientError::Timeout(d)) => assert_eq!(d, Duration::from_millis(300)),
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert!(start.elapsed() >= Duration::from_millis(300));
    drop(client);
    server.abort();
}

#[tokio::test]
async fn a_peer_that_answers_garbage_or_the_wrong_kind_is_not_believed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("liar.sock");
    let listener = tokio::net::UnixListener::bind(&path).unwrap();
    // Answers every request with garbage, then with an identity response to request id 1.
    let server = tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        let (mut conn, _) = listener.accept().await.unwrap();
        conn.write_all(&[0x13, 0x37, 0xFF, 0x00, 0x00]).await.unwrap();
        let identity = ppn_wire::service::NodeIdentity {
            node_id: Default::default(),
            platform: ppn_wire::service::Platform::Hosted,
            tcb_version: Default::default(),
        };
        let mut frame = vec![0u8; ppn_wire::MAX_FRAME_LEN];
        let n = ppn_wire::encode_response(
            1,
            &Response::Node(ppn_wire::message::NodeResponse::Identity(identity)),
            &mut frame,
        )
        .unwrap();
        let mut enc = vec![0u8; ppn_wire::stream::MAX_ENCODED_LEN];
        let m = ppn_wire::stream::encode(&frame[..n], &mut enc).unwrap();
        conn.write_all(&enc[..m]).await.unwrap();
        tokio::time::sleep(Duration::from_secs(5)).await;
    });
    let client = TcbClient::connect(&path).await.unwrap().with_timeout(Duration::from_secs(2));
    // Request id 1 is a status request; the identity answer must not be taken for it.
    match client.status().await {
        Err(ClientError::UnexpectedResponse { expected, got }) => {
            assert_eq!(expected, ppn_wire::Kind::NodeStatus);
            assert_eq!(got, ppn_wire::Kind::NodeIdentity);
        }
        other => panic!("expected UnexpectedResponse, got {other:?}"),
    }
    server.abort();
}
