//! An asynchronous Kafka connection on glommio, for the load generator.
//!
//! Requests are pipelined: `request` writes a frame and returns a `Reply` without
//! waiting for the answer, so a producer keeps several requests in flight on one
//! connection as Kafka clients do. The broker answers in request order; a reader task
//! hands each answer to the oldest waiting `Reply` after checking its correlation id.
//! Framing and decoding are `spate_net::client`'s, shared with the blocking client.
//! When the connection fails every waiting `Reply` gets the error, and later requests
//! fail at once. Nothing here crosses threads: one connection belongs to one executor.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::marker::PhantomData;
use std::net::ToSocketAddrs;
use std::rc::Rc;

use bytes::{Bytes, BytesMut};
use futures::channel::oneshot;
use futures::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use futures::lock::Mutex;
use glommio::net::TcpStream;
use kafka_protocol::messages::ApiKey;
use kafka_protocol::protocol::Request;
use spate_net::client::{decode_response, encode_request, frame_size};
use spate_net::NetError;

use crate::limits::{IN_FLIGHT_MAX, SETUP_TIMEOUT};

type Answer = Result<Bytes, String>;

struct Waiting {
    correlation_id: i32,
    answer: oneshot::Sender<Answer>,
}

#[derive(Default)]
struct Shared {
    waiting: VecDeque<Waiting>,
    /// Why the connection is unusable, once it is.
    broken: Option<String>,
}

/// One connection to one broker.
pub struct Conn {
    address: String,
    writer: Mutex<WriteHalf<TcpStream>>,
    shared: Rc<RefCell<Shared>>,
    correlation_id: Cell<i32>,
    client_id: String,
    frame: RefCell<BytesMut>,
    /// The reader task; dropping the connection cancels it.
    _reader: glommio::Task<()>,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn")
            .field("address", &self.address)
            .finish()
    }
}

/// The answer to come to one request.
pub struct Reply<R: Request> {
    key: ApiKey,
    version: i16,
    answer: oneshot::Receiver<Answer>,
    _request: PhantomData<R>,
}

impl<R: Request> Reply<R> {
    /// Waits for the answer and decodes it.
    pub async fn wait(self) -> Result<R::Response, String> {
        let body = self
            .answer
            .await
            .map_err(|_| "the connection closed".to_string())??;
        decode_response::<R>(body, self.key, self.version)
            .map(|(_, response)| response)
            .map_err(|e| e.to_string())
    }
}

impl Conn {
    /// Connects to `address` (`host:port`).
    pub async fn connect(address: &str, client_id: &str) -> Result<Rc<Conn>, String> {
        let unreachable = |e: &dyn std::fmt::Display| format!("cannot connect to {address}: {e}");
        let resolved = address
            .to_socket_addrs()
            .map_err(|e| unreachable(&e))?
            .next()
            .ok_or_else(|| unreachable(&"the name resolves to no address"))?;
        let stream = TcpStream::connect_timeout(resolved, SETUP_TIMEOUT)
            .await
            .map_err(|e| unreachable(&e))?;
        stream.set_nodelay(true).map_err(|e| unreachable(&e))?;
        let (reader, writer) = stream.split();
        let shared = Rc::new(RefCell::new(Shared::default()));
        let reader =
            glommio::spawn_local(read_answers(reader, shared.clone(), address.to_string()));
        Ok(Rc::new(Conn {
            address: address.to_string(),
            writer: Mutex::new(writer),
            shared,
            correlation_id: Cell::new(0),
            client_id: client_id.to_string(),
            frame: RefCell::new(BytesMut::new()),
            _reader: reader,
        }))
    }

    /// Why the connection is broken, if it is.
    pub fn broken(&self) -> Option<String> {
        self.shared.borrow().broken.clone()
    }

    /// Writes `request` and returns its reply to come. Requests written by one task are
    /// on the wire in the order of the calls.
    pub async fn request<R: Request>(&self, version: i16, request: &R) -> Result<Reply<R>, String> {
        let (sender, answer) = oneshot::channel();
        let key = self.write(version, request, Some(sender)).await?;
        Ok(Reply {
            key,
            version,
            answer,
            _request: PhantomData,
        })
    }

    /// Writes a request the broker does not answer (Produce with acks=0).
    pub async fn request_unanswered<R: Request>(
        &self,
        version: i16,
        request: &R,
    ) -> Result<(), String> {
        self.write(version, request, None).await.map(drop)
    }

    async fn write<R: Request>(
        &self,
        version: i16,
        request: &R,
        answer: Option<oneshot::Sender<Answer>>,
    ) -> Result<ApiKey, String> {
        let mut writer = self.writer.lock().await;
        if let Some(why) = self.broken() {
            return Err(why);
        }
        let correlation_id = self.correlation_id.get().wrapping_add(1);
        self.correlation_id.set(correlation_id);
        let mut frame = std::mem::take(&mut *self.frame.borrow_mut());
        frame.clear();
        let key = encode_request(
            &mut frame,
            version,
            correlation_id,
            &self.client_id,
            request,
        )
        .map_err(|e| e.to_string())?;
        if let Some(answer) = answer {
            let mut shared = self.shared.borrow_mut();
            assert!(
                shared.waiting.len() < IN_FLIGHT_MAX * 4,
                "callers bound their requests in flight"
            );
            shared.waiting.push_back(Waiting {
                correlation_id,
                answer,
            });
        }
        let written = writer.write_all(&frame).await;
        *self.frame.borrow_mut() = frame;
        if let Err(e) = written {
            let why = format!("cannot write to {}: {e}", self.address);
            fail_all(&self.shared, &why);
            return Err(why);
        }
        Ok(key)
    }
}

/// Reads answers until the connection fails, handing each to the oldest waiter.
async fn read_answers(
    mut reader: ReadHalf<TcpStream>,
    shared: Rc<RefCell<Shared>>,
    address: String,
) {
    let why = loop {
        let mut prefix = [0u8; 4];
        if let Err(e) = reader.read_exact(&mut prefix).await {
            break format!("the connection to {address} closed: {e}");
        }
        let size = match frame_size(prefix) {
            Ok(size) => size,
            Err(e) => break format!("{address}: {e}"),
        };
        let mut body = vec![0u8; size];
        if let Err(e) = reader.read_exact(&mut body).await {
            break format!("the connection to {address} closed: {e}");
        }
        let Some(waiting) = shared.borrow_mut().waiting.pop_front() else {
            break format!("{address} sent an answer to no request");
        };
        let correlation_id = body
            .get(..4)
            .map(|b| i32::from_be_bytes(b.try_into().expect("4 bytes")));
        if correlation_id != Some(waiting.correlation_id) {
            let _ = waiting.answer.send(Err(NetError::Malformed(format!(
                "{address} answered request {correlation_id:?} while {} was due",
                waiting.correlation_id
            ))
            .to_string()));
            break format!("{address} answered out of order");
        }
        // The waiter may have given up; its answer is then dropped.
        let _ = waiting.answer.send(Ok(Bytes::from(body)));
    };
    fail_all(&shared, &why);
}

fn fail_all(shared: &Rc<RefCell<Shared>>, why: &str) {
    let mut shared = shared.borrow_mut();
    shared.broken.get_or_insert_with(|| why.to_string());
    for waiting in shared.waiting.drain(..) {
        let _ = waiting.answer.send(Err(why.to_string()));
    }
}
