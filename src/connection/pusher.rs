//! The Pusher dialect of a connection (PROTOCOL section 11): the same loop, limits and hub as
//! `/ws`, reading Pusher's events instead of fanfare's frames. `pusher:ping` is answered,
//! `pusher:subscribe` checks the application's signature and starts the subscription as any
//! other (a presence channel as its `channel_data` says, opening with the fleet's members),
//! and `client-*` events are published on private and presence channels, at most
//! [`CLIENT_EVENTS_PER_SECOND`] a second.

use std::sync::{Arc, Mutex};

use serde_json::Value;
use tokio::time::Instant;

use super::{Answered, Connection, Pending, Step};
use crate::bus::Delivery;
use crate::error::CloseReason;
use crate::hub::{self, Answer};
use crate::merge::Asked;
use crate::metrics::WorkerMetrics;
use crate::protocol::{Channel, Frame, Target, UserId, MAX_PAGE};
use crate::pusher::{self as wire, close, App, Kind, CLIENT_EVENTS_PER_SECOND};
use crate::webhooks::{Event, Webhooks};

/// What a Pusher connection knows of itself.
pub struct Socket {
    pub app: Arc<App>,
    pub id: Arc<str>,
    /// With `--pusher-webhook`: where its client events are reported.
    webhooks: Option<Arc<Webhooks>>,
    /// Client events this second: when the second began, how many.
    budget: Mutex<(Instant, u32)>,
    /// The Pusher user id it signed in as (`pusher:signin`).
    user: Mutex<Option<String>>,
}

impl Socket {
    pub fn new(app: Arc<App>, id: Arc<str>, webhooks: Option<Arc<Webhooks>>) -> Self {
        Socket {
            app,
            id,
            webhooks,
            budget: Mutex::new((Instant::now(), 0)),
            user: Mutex::new(None),
        }
    }

    fn user(&self) -> Option<String> {
        self.user.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Takes one client event from this second's budget; false when it is spent.
    fn spend(&self) -> bool {
        let mut budget = self.budget.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if now.duration_since(budget.0).as_secs() > 0 {
            *budget = (now, 0);
        }
        budget.1 += 1;
        budget.1 <= CLIENT_EVENTS_PER_SECOND
    }
}

/// The close code pusher-js acts on for each reason the server closes.
pub fn close_code(reason: CloseReason) -> u16 {
    match reason {
        // Reconnect at once (elsewhere, while this one drains).
        CloseReason::Restart => close::RECONNECT,
        CloseReason::PingTimeout => close::PONG_NOT_RECEIVED,
        // Come back after a while.
        CloseReason::SlowConsumer => close::OVER_CAPACITY,
        // Over --client-rate for long: as Pusher closes a client too fast.
        CloseReason::RateLimited => close::RATE_LIMITED,
        other => other.code(),
    }
}

impl Connection {
    pub(super) fn on_pusher_text(&self, socket: &Socket, text: &str) -> Step {
        let Ok(message) = serde_json::from_str::<Value>(text) else {
            return self.pusher_refuse(wire::error(None, "invalid JSON"));
        };
        let event = message["event"].as_str().unwrap_or_default();
        match event {
            "pusher:ping" => self.reply(wire::pong()),
            "pusher:pong" => Step::Continue,
            "pusher:subscribe" => self.pusher_subscribe(socket, &message["data"]),
            "pusher:signin" => self.sign_in(socket, &message["data"]),
            "pusher:unsubscribe" => {
                if let Some(channel) = message["data"]["channel"]
                    .as_str()
                    .and_then(|c| wire::channel(c).ok())
                {
                    let r = &self.registration;
                    hub::lock(&r.hub).unsubscribe(r.id, &channel);
                }
                Step::Continue
            }
            e if e.starts_with("client-") => self.client_event(socket, e, &message),
            _ => Step::Continue,
        }
    }

    fn pusher_refuse(&self, frame: Frame) -> Step {
        WorkerMetrics::inc(&self.worker.metrics.client_errors);
        self.reply(frame)
    }

    fn pusher_subscribe(&self, socket: &Socket, data: &Value) -> Step {
        let name = data["channel"].as_str().unwrap_or_default();
        let refuse = |kind: &str, error: &str, status| {
            self.pusher_refuse(wire::subscription_error(name, kind, error, status))
        };
        let channel = match wire::channel(name) {
            Ok(c) => c,
            Err(e) => return refuse("InvalidChannel", &e.to_string(), 400),
        };
        if let Some(user) = name.strip_prefix(wire::SERVER_TO_USER) {
            if socket.user().as_deref() != Some(user) {
                return refuse(
                    "AuthError",
                    "only the user signed in on this connection (pusher:signin) receives its events",
                    403,
                );
            }
        } else if name.starts_with('#') {
            return refuse(
                "InvalidChannel",
                "channels starting with # are reserved",
                400,
            );
        }
        let kind = Kind::of(name);
        let channel_data = data["channel_data"].as_str();
        if kind.is_private() {
            let auth = data["auth"].as_str().unwrap_or_default();
            let signed = channel_data.filter(|_| kind == Kind::Presence);
            if !socket.app.authorizes(auth, &socket.id, name, signed) {
                return refuse(
                    "AuthError",
                    "the auth signature does not match this socket and channel",
                    401,
                );
            }
        }
        let me = match kind {
            Kind::Presence => match presence_member(channel_data) {
                Some(me) => Some(me),
                None => {
                    return refuse(
                        "AuthError",
                        &format!(
                            "a presence channel needs channel_data with a user_id (1 to 256 bytes) \
                             and a user_info of at most {} bytes",
                            crate::presence::MAX_INFO_BYTES
                        ),
                        400,
                    )
                }
            },
            _ => None,
        };
        let r = &self.registration;
        let mut hub = hub::lock(&r.hub);
        let reservation = hub.reserve(r.id, &channel, false);
        match hub.answer(reservation, &channel, Asked::Client) {
            Answer::Start => {
                if let Some((user, info)) = &me {
                    hub.present_as(r.id, &channel, user.clone(), info.clone());
                    hub.watch(r.id, &channel, true);
                }
                drop(hub);
                self.when_confirmed(Pending {
                    channel,
                    since: None,
                    asked: Asked::Client,
                    members_with: me,
                    deltas: false,
                })
            }
            Answer::Refuse(_) if matches!(reservation, hub::Reservation::TooMany) => {
                drop(hub);
                refuse(
                    "LimitReached",
                    "too many subscriptions on this connection",
                    400,
                )
            }
            // Subscribed already, or on its way: Pusher says nothing more.
            Answer::Reply(_) | Answer::Refuse(_) | Answer::Nothing => Step::Continue,
        }
    }

    /// `pusher:signin`: `user_data` (JSON with a string `id`) signed by the application's user
    /// authentication endpoint. From then on the socket is that user's: it may join
    /// `#server-to-user-<id>`, and `terminate_connections` closes it.
    fn sign_in(&self, socket: &Socket, data: &Value) -> Step {
        let auth = data["auth"].as_str().unwrap_or_default();
        let user_data = data["user_data"].as_str().unwrap_or_default();
        if !socket.app.signs_in(auth, &socket.id, user_data) {
            return self.pusher_refuse(wire::error(
                None,
                "pusher:signin refused: the auth signature does not match this socket and user_data",
            ));
        }
        let id = serde_json::from_str::<Value>(user_data)
            .ok()
            .and_then(|v| v["id"].as_str().map(str::to_string))
            .filter(|id| !id.is_empty());
        let Some((id, user)) = id.and_then(|id| Some((id.clone(), wire::user(&id).ok()?))) else {
            return self.pusher_refuse(wire::error(
                None,
                "pusher:signin refused: user_data needs a string id (at most 244 bytes)",
            ));
        };
        let r = &self.registration;
        hub::lock(&r.hub).sign_in(r.id, user);
        *socket.user.lock().unwrap_or_else(|e| e.into_inner()) = Some(id);
        self.reply(wire::signin_success(user_data))
    }

    /// A presence channel started, its messages and events held: it opens with the fleet's
    /// members (this one among them, though Redis may not have it yet), asked like any
    /// presence question, then what was held. Redis unreachable: refused with 503.
    pub(super) fn pusher_members(
        &self,
        channel: Channel,
        start: u64,
        me: (UserId, Option<Arc<str>>),
    ) -> Step {
        let router = self.worker.router.clone();
        Step::Ask(Box::pin(async move {
            let name = wire::name(&channel).unwrap_or(channel.as_str()).to_string();
            let page = match router.presence_page(&channel, None, MAX_PAGE).await {
                Ok(page) => page,
                Err(_) => {
                    let why = "presence cannot be read now (Redis is unreachable); subscribe again";
                    let frame = wire::subscription_error(&name, "PresenceUnavailable", why, 503);
                    return Answered::Refused(channel, frame);
                }
            };
            let mut members: Vec<(String, Option<Arc<str>>)> = page
                .members
                .into_iter()
                .map(|m| (m.user.as_str().to_string(), m.info))
                .collect();
            if !members.iter().any(|(id, _)| id == me.0.as_str()) {
                members.push((me.0.as_str().to_string(), me.1));
            }
            let frame = wire::subscription_succeeded(&name, &wire::presence_data(&members));
            Answered::Opened(channel, start, frame)
        }))
    }

    /// The members were read: `subscription_succeeded`, then what was held meanwhile.
    pub(super) fn pusher_opened(&self, channel: &Channel, start: u64, frame: Frame) -> Step {
        let r = &self.registration;
        match hub::lock(&r.hub).open_pusher(r.id, channel, start, frame) {
            true => self.flushed(self.writer.flush()),
            false => Step::Continue,
        }
    }

    /// The members could not be read: the subscription ends, and the client is told.
    pub(super) fn pusher_refused(&self, channel: &Channel, frame: Frame) -> Step {
        let r = &self.registration;
        hub::lock(&r.hub).unsubscribe(r.id, channel);
        self.reply(frame)
    }

    /// A `client-*` event: published on a private or presence channel this connection is
    /// subscribed to, to everyone there but itself.
    fn client_event(&self, socket: &Socket, event: &str, message: &Value) -> Step {
        let name = message["channel"].as_str().unwrap_or_default();
        let Ok(channel) = wire::channel(name) else {
            return self.pusher_refuse(wire::error(None, "a client event needs its channel"));
        };
        if !Kind::of(name).is_private() {
            return self.pusher_refuse(wire::error(
                None,
                "client events are allowed on private and presence channels only",
            ));
        }
        let r = &self.registration;
        let (subscribed, member) = {
            let hub = hub::lock(&r.hub);
            (
                hub.is_subscribed(r.id, &channel),
                hub.present_as_in(r.id, &channel),
            )
        };
        if !subscribed {
            return self.pusher_refuse(wire::error(None, &format!("subscribe to {name} first")));
        }
        if !socket.spend() {
            return self.pusher_refuse(wire::error(
                Some(close::RATE_LIMITED),
                &format!("at most {CLIENT_EVENTS_PER_SECOND} client events a second"),
            ));
        }
        // On a presence channel, who sent it (pusher-js gives it to the app as `user_id`).
        let user = member.as_ref().map(UserId::as_str);
        let payload = wire::payload(event, &message["data"], Some(&socket.id), user);
        let Ok(payload) = serde_json::value::RawValue::from_string(payload) else {
            return Step::Continue;
        };
        let target = Target::Channel(channel);
        let delivery = Delivery {
            frame: Frame::message(&target, &payload),
            target,
            position: None,
        };
        let router = self.worker.router.clone();
        let hook = socket.webhooks.clone().map(|webhooks| {
            let event = Event::Client {
                channel: name.to_string(),
                event: event.to_string(),
                data: message["data"].clone(),
                socket_id: socket.id.to_string(),
                user_id: user.map(str::to_string),
            };
            (webhooks, event)
        });
        // In order with this connection's other client events: published before reading on.
        Step::Ask(Box::pin(async move {
            match router.publish(vec![delivery]).await {
                Ok(_) => {
                    if let Some((webhooks, event)) = hook {
                        webhooks.push(&event);
                    }
                    Answered::Nothing
                }
                Err(_) => Answered::Reply(wire::error(
                    None,
                    "the event could not be published now; retry",
                )),
            }
        }))
    }
}

/// The member a presence subscription's `channel_data` names: `{"user_id":…,"user_info":…}`
/// (`user_id` a string or a number; `user_info` as small as a token's presence `info`, since
/// every member's is kept and sent to every newcomer).
fn presence_member(channel_data: Option<&str>) -> Option<(UserId, Option<Arc<str>>)> {
    let v: Value = serde_json::from_str(channel_data?).ok()?;
    let id = match &v["user_id"] {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        _ => return None,
    };
    let info = match v.get("user_info").map(Value::to_string) {
        Some(info) if info.len() > crate::presence::MAX_INFO_BYTES => return None,
        info => info.map(Arc::from),
    };
    Some((UserId::new(&id).ok()?, info))
}
