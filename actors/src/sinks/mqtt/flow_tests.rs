//! The patched rumqttc event loop (`vendor/rumqttc`, docs/decisions.md "rumqttc, patched"):
//! once the in-flight window is full, new publishes wait until half of it is acknowledged and
//! then leave as a run, in order. A scripted broker on loopback answers only what the test
//! tells it to — a real broker acknowledges at once, so it cannot hold a window full.

use bytes::BytesMut;
use rumqttc::mqttbytes::v4::{ConnAck, ConnectReturnCode, Packet as Wire, PubAck};
use rumqttc::v5::mqttbytes::v5::Packet as W5;
use rumqttc::{AsyncClient, Event, MqttOptions, Outgoing, Packet, QoS};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

/// What the client's event loop reported, in order.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Seen {
    Sent(u16),
    Acked(u16),
}

/// Accepts one client, answers its CONNECT, discards what it sends and writes a PUBACK for
/// each packet id it is given (MQTT 3.1.1, or 5 with `v5`).
async fn scripted_broker(listener: TcpListener, v5: bool, mut acks: mpsc::UnboundedReceiver<u16>) {
    let (s, _) = listener.accept().await.unwrap();
    let (mut rd, mut wr) = s.into_split();
    let mut buf = BytesMut::new();
    loop {
        // Some(is a CONNECT) once a whole packet is buffered.
        let connect = if v5 {
            W5::read(&mut buf, None)
                .ok()
                .map(|p| matches!(p, W5::Connect(..)))
        } else {
            Wire::read(&mut buf, 1 << 20)
                .ok()
                .map(|p| matches!(p, Wire::Connect(_)))
        };
        match connect {
            Some(true) => break,
            Some(false) => panic!("expected CONNECT"),
            None => assert!(rd.read_buf(&mut buf).await.unwrap() > 0, "closed"),
        }
    }
    let mut out = BytesMut::new();
    if v5 {
        let ack = rumqttc::v5::mqttbytes::v5::ConnAck {
            session_present: false,
            code: rumqttc::v5::mqttbytes::v5::ConnectReturnCode::Success,
            properties: None,
        };
        ack.write(&mut out).unwrap();
    } else {
        ConnAck::new(ConnectReturnCode::Success, false)
            .write(&mut out)
            .unwrap();
    }
    wr.write_all(&out).await.unwrap();
    tokio::spawn(async move {
        let mut sink = vec![0u8; 64 << 10];
        while rd.read(&mut sink).await.is_ok_and(|n| n > 0) {}
    });
    while let Some(pkid) = acks.recv().await {
        let mut out = BytesMut::new();
        if v5 {
            rumqttc::v5::mqttbytes::v5::PubAck::new(pkid, None)
                .write(&mut out)
                .unwrap();
        } else {
            PubAck::new(pkid).write(&mut out).unwrap();
        }
        wr.write_all(&out).await.unwrap();
    }
}

/// Either protocol's event loop, reduced to what the test looks at.
enum Events {
    V4(Box<rumqttc::EventLoop>),
    V5(Box<rumqttc::v5::EventLoop>),
}

impl Events {
    async fn next(&mut self) -> Option<Seen> {
        use rumqttc::v5::mqttbytes::v5::Packet as P5;
        match self {
            Events::V4(e) => match e.poll().await.unwrap() {
                Event::Outgoing(Outgoing::Publish(pkid)) => Some(Seen::Sent(pkid)),
                Event::Incoming(Packet::PubAck(a)) => Some(Seen::Acked(a.pkid)),
                _ => None,
            },
            Events::V5(e) => match e.poll().await.unwrap() {
                rumqttc::v5::Event::Outgoing(Outgoing::Publish(pkid)) => Some(Seen::Sent(pkid)),
                rumqttc::v5::Event::Incoming(P5::PubAck(a)) => Some(Seen::Acked(a.pkid)),
                _ => None,
            },
        }
    }
}

/// Polls the event loop until `until` holds for what it has seen.
async fn poll_until(events: &mut Events, seen: &mut Vec<Seen>, until: impl Fn(&[Seen]) -> bool) {
    while !until(seen) {
        if let Some(s) = events.next().await {
            seen.push(s);
        }
    }
}

fn count(seen: &[Seen], f: fn(&Seen) -> bool) -> usize {
    seen.iter().filter(|s| f(s)).count()
}

#[tokio::test]
async fn a_full_window_refills_once_half_of_it_is_acknowledged() {
    window_refills(false, 10).await;
}

#[tokio::test]
async fn a_full_window_refills_once_half_of_it_is_acknowledged_mqtt5() {
    window_refills(true, 10).await;
}

/// The edges of "half": a window of 3 refills at 1 in flight, a window of 1 at none.
#[tokio::test]
async fn small_windows_refill_at_their_half() {
    window_refills(false, 3).await;
    window_refills(false, 1).await;
    window_refills(true, 3).await;
}

async fn window_refills(v5: bool, window: u16) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (ack, acks) = mpsc::unbounded_channel();
    let broker = tokio::spawn(scripted_broker(listener, v5, acks));

    // `window` in flight at most, twice that queued.
    let total = 2 * usize::from(window);
    let mut events = if v5 {
        let mut o = rumqttc::v5::MqttOptions::new("flow-test", "127.0.0.1", port);
        o.set_outgoing_inflight_upper_limit(window);
        let (client, events) = rumqttc::v5::AsyncClient::new(o, 64);
        for i in 0..total as u32 {
            let qos = rumqttc::v5::mqttbytes::QoS::AtLeastOnce;
            client
                .publish("t", qos, false, i.to_be_bytes().to_vec())
                .await
                .unwrap();
        }
        Events::V5(Box::new(events))
    } else {
        let mut o = MqttOptions::new("flow-test", "127.0.0.1", port);
        o.set_inflight(window);
        let (client, events) = AsyncClient::new(o, 64);
        for i in 0..total as u32 {
            client
                .publish("t", QoS::AtLeastOnce, false, i.to_be_bytes().to_vec())
                .await
                .unwrap();
        }
        Events::V4(Box::new(events))
    };
    let mut seen = Vec::new();
    let sent = |s: &Seen| matches!(s, Seen::Sent(_));
    let acked = |s: &Seen| matches!(s, Seen::Acked(_));
    let w = usize::from(window);
    // Acknowledgements that bring the window down to half: 5 of 10, 2 of 3, 1 of 1.
    let release = window - window / 2;

    // The window fills, the rest is held.
    poll_until(&mut events, &mut seen, |s| count(s, sent) == w).await;
    // Acknowledged one by one, each seen by the client before the next is sent: above half
    // the window in flight, nothing new may leave.
    for pkid in 1..=release {
        ack.send(pkid).unwrap();
        poll_until(&mut events, &mut seen, |s| s.contains(&Seen::Acked(pkid))).await;
    }
    // Half the window is free now: what was acknowledged leaves again as one run, no more.
    let run = usize::from(release);
    poll_until(&mut events, &mut seen, |s| count(s, sent) == w + run).await;
    let first = seen.iter().position(|s| *s == Seen::Acked(1)).unwrap();
    let last = seen
        .iter()
        .position(|s| *s == Seen::Acked(release))
        .unwrap();
    assert_eq!(
        count(&seen[first..last], sent),
        0,
        "window {window}: a publish left before half the window was acknowledged: {seen:?}"
    );
    assert_eq!(count(&seen[last..], sent), run, "window {window}: {seen:?}");

    // The rest drains: every publish acknowledged (an ack is only sent for a publish the
    // client has sent), packet ids reused in order.
    for pkid in (release + 1..=window).chain(1..=release) {
        ack.send(pkid).unwrap();
    }
    poll_until(&mut events, &mut seen, |s| count(s, sent) == total).await;
    for pkid in release + 1..=window {
        ack.send(pkid).unwrap();
    }
    poll_until(&mut events, &mut seen, |s| count(s, acked) == total).await;
    let ids: Vec<u16> = seen
        .iter()
        .filter_map(|s| match s {
            Seen::Sent(p) => Some(*p),
            _ => None,
        })
        .collect();
    let expected: Vec<u16> = (1..=window).chain(1..=window).collect();
    assert_eq!(ids, expected, "window {window}");
    broker.abort();
}
