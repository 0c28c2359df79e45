//! The CONNECT handshake: client id rules, authentication (the check workers, the lockout),
//! the will, binding the router session, CONNACK, and what follows at once (restored
//! subscriptions re-checked, subscriptions by broker).
//!
//! A refused CONNECT gets its CONNACK and one log line naming the peer and the reason; the
//! session is never touched.

use super::*;

impl MqttSession {
    /// Validates and authenticates CONNECT, binds the session and sends CONNACK.
    pub(super) async fn accept_connect(
        &mut self,
        stream: &Stream,
        connect: Box<Connect>,
    ) -> Result<(), Close> {
        let config = self.broker.config.clone();
        let cfg = &config.mqtt;
        self.protocol = connect.protocol;
        let v5 = self.protocol.is_v5();
        let mut assigned = None;
        // Owned copies: a slice would pin the whole read buffer for the session's life.
        let mut client_id = ByteStr::from(connect.client_id.as_str());
        if client_id.is_empty() {
            if !v5 && !connect.clean_start {
                return Err(self.refuse(
                    reason::CLIENT_IDENTIFIER_NOT_VALID,
                    "empty client id with clean session false",
                ));
            }
            let id = self.broker.assign_client_id();
            client_id = ByteStr::from(id.clone());
            assigned = Some(id);
        }
        if client_id.len() > cfg.max_clientid_len {
            return Err(self.refuse(reason::CLIENT_IDENTIFIER_NOT_VALID, "client id too long"));
        }
        if client_id.starts_with('$') {
            // The gateway's own clients (`$bridge/{name}`) live there: a device must not
            // squat or take over their sessions.
            return Err(self.refuse(
                reason::CLIENT_IDENTIFIER_NOT_VALID,
                "client ids starting with $ are reserved for the gateway's own clients",
            ));
        }
        self.client_id = ClientId::from(client_id.clone());
        self.username = connect.username.as_ref().map(|u| u.as_str().into());
        conn_event!(
            debug,
            self,
            username = self.username.as_deref().unwrap_or(""),
            proto_ver = self.protocol.level(),
            keepalive = connect.keep_alive,
            clean_start = connect.clean_start,
            will = connect.will.as_ref().map_or("", |w| w.topic.as_str()),
            "CONNECT"
        );

        if v5 && connect.properties.authentication_method.is_some() {
            // Enhanced authentication (AUTH exchanges) is not supported: MQTT 5 §3.1.2.11.9
            // wants 0x8C, not a CONNACK that ignores the method the client relies on.
            return Err(self.refuse(
                reason::BAD_AUTHENTICATION_METHOD,
                "enhanced authentication (authentication method) is not supported",
            ));
        }
        if v5 && !cfg.retain_available && connect.will.as_ref().is_some_and(|w| w.retain) {
            // MQTT 5 §3.2.2.3.5: a retained will cannot be honoured.
            return Err(self.refuse(
                reason::RETAIN_NOT_SUPPORTED,
                "retained will while retain_available = false",
            ));
        }
        let cert_login = self.peer_cert().and_then(|c| c.login.clone());
        let decision = match cert_login {
            // The listener verified the certificate against its CA and names the client by it
            // (tls.peer_cert_as_username): that is the authentication.
            Some(name) => {
                self.username = Some(name.into_boxed_str());
                AuthDecision::Allow(Admitted::Certificate)
            }
            None if connect.password.is_some()
                && connect.username.as_ref().is_some_and(|u| {
                    self.broker
                        .login_lockout
                        .is_locked(self.peer.ip(), u.as_str(), Instant::now())
                }) =>
            {
                self.broker
                    .traffic
                    .logins_refused_locked
                    .fetch_add(1, Ordering::Relaxed);
                return Err(self.refuse(
                    reason::BAD_USERNAME_OR_PASSWORD,
                    "too many failed logins for this user from this address (auth.max_login_failures)",
                ));
            }
            None => match self.authenticate(stream, &connect).await {
                Ok(decision) => decision,
                Err(NoCheck::Busy) => {
                    self.broker
                        .traffic
                        .logins_refused_busy
                        .fetch_add(1, Ordering::Relaxed);
                    return Err(self.refuse(
                        reason::SERVER_BUSY,
                        "password checks are saturated (auth.max_pending_checks / auth.check_timeout)",
                    ));
                }
                Err(NoCheck::Gone) => {
                    conn_event!(debug, self, "client left while its login waited");
                    return Err(Close::new(DisconnectReason::TcpClosed, None));
                }
            },
        };
        let password_user = decision == AuthDecision::Allow(Admitted::Password);
        if password_user {
            if let Some(user) = connect.username.as_ref() {
                self.broker
                    .login_lockout
                    .succeeded(self.peer.ip(), user.as_str());
            }
        }
        match decision {
            AuthDecision::Allow(admitted) => {
                if !admitted.verified_user() {
                    if let Some(claimed) = self.username.take() {
                        // Nobody checked it: it must not drive ACL `user` rules, `%u` or the
                        // session's ownership.
                        conn_event!(debug, self, claimed = %claimed, admitted = ?admitted, "user name not verified: ignored");
                    }
                }
            }
            AuthDecision::BadCredentials => {
                if let Some(user) = connect.username.as_ref() {
                    self.broker
                        .login_lockout
                        .mqtt_login_failed(self.peer, user.as_str());
                }
                return Err(
                    self.refuse(reason::BAD_USERNAME_OR_PASSWORD, "bad username or password")
                );
            }
            AuthDecision::NotAuthorized => {
                return Err(self.refuse(reason::NOT_AUTHORIZED, "not authorized"));
            }
        }

        if let Some(w) = &connect.will {
            let m = &self.broker.config.mqtt;
            if topic::validate_topic_name(&w.topic).is_err()
                || w.topic.starts_with('$')
                || w.topic.len() > m.max_topic_len
                || topic::topic_levels(&w.topic) > m.max_topic_levels
            {
                return Err(self.refuse(reason::TOPIC_NAME_INVALID, "invalid will topic"));
            }
            // A will is a publish the client makes later: EMQX refuses the CONNECT when the ACL
            // denies its topic (`check_will_acl`), rather than let it slip past the ACL.
            if self.acl_allows(Action::Publish, &w.topic) == Permission::Deny {
                return Err(self.refuse(reason::NOT_AUTHORIZED, "will topic denied by the ACL"));
            }
            // The will's expiry counts from when it is published (MQTT 5 §3.1.3.2.4): the
            // router arms it then. Not this session's publish for No Local: it has ended.
            let origin = Origin {
                session: None,
                client_id: Some(ClientId::from(client_id.clone())),
            };
            self.will = Some(Will {
                message: Arc::new(Message::new(
                    w.topic.as_str(),
                    bytes::Bytes::copy_from_slice(&w.payload),
                    w.qos,
                    w.retain,
                    w.properties.clone(),
                    origin,
                )),
                delay: Duration::from_secs(u64::from(w.will_delay_interval.unwrap_or(0))),
            });
        }

        self.connect_expiry_zero =
            v5 && connect.properties.session_expiry_interval.unwrap_or(0) == 0;
        let requested_expiry = if v5 {
            Duration::from_secs(u64::from(
                connect.properties.session_expiry_interval.unwrap_or(0),
            ))
        } else if connect.clean_start {
            Duration::ZERO
        } else {
            cfg.session_expiry
        };
        let session_expiry = requested_expiry.min(cfg.session_expiry);
        let client_receive_max =
            usize::from(connect.properties.receive_maximum.unwrap_or(u16::MAX));
        let window = usize::from(cfg.max_inflight).min(client_receive_max).max(1);
        if v5 {
            self.client_alias_max = connect.properties.topic_alias_maximum.unwrap_or(0);
            if let Some(max) = connect.properties.maximum_packet_size {
                self.client_max_packet = max;
            }
        }
        // MQTT 5 §3.2.2.3.14: a Server Keep Alive in CONNACK replaces the client's value.
        let server_keepalive = cfg.server_keepalive.filter(|_| v5);
        let keep_alive = server_keepalive.unwrap_or(connect.keep_alive);
        self.keep_alive = Duration::from_secs_f32(f32::from(keep_alive) * cfg.keepalive_multiplier);

        self.ctrl.set_meta(ConnMeta {
            peer: self.peer,
            username: self.username.as_deref().map(Arc::from),
            connected_at: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            password_user,
            proto_name: "mqtt",
        });
        let result = self.broker.with_router(|r: &mut Router| {
            r.connect(ConnectParams {
                client_id: ClientId::from(client_id.clone()),
                protocol: self.protocol,
                clean_start: connect.clean_start,
                session_expiry,
                window,
                conn: self.ctrl.clone(),
                now: Instant::now(),
                owner: Owner::of(self.username.as_deref()),
                on_owner_mismatch: cfg.session_owner_mismatch,
            })
        });
        let result = match result {
            Ok(result) => result,
            Err(ConnectRefusal::NotOwner) => {
                return Err(self.refuse(
                    reason::NOT_AUTHORIZED,
                    "the client id's session belongs to another identity",
                ));
            }
            Err(ConnectRefusal::TooManySessions) => {
                return Err(self.refuse(reason::QUOTA_EXCEEDED, "max_sessions reached"));
            }
        };
        if let Some(old) = result.replaced {
            old.discarded.store(connect.clean_start, Ordering::Relaxed);
            old.close_with(reason::SESSION_TAKEN_OVER);
        }
        self.session = result.session_id;
        if result.session_present {
            self.recheck_restored_subscriptions();
        }
        // Shutdown closes connected sessions through the router (`close_all`); one that
        // registered just after that sweep closes itself here.
        if self.broker.shutdown.is_cancelled() {
            self.ctrl.close_with(reason::SERVER_SHUTTING_DOWN);
        }

        let mut properties = Properties::default();
        if v5 {
            properties.assigned_client_identifier = assigned.map(ByteStr::from);
            if cfg.max_awaiting_rel < usize::from(u16::MAX) {
                properties.receive_maximum = Some(cfg.max_awaiting_rel as u16);
            }
            properties.maximum_packet_size = Some(cfg.max_packet_size);
            properties.topic_alias_maximum = Some(cfg.max_topic_alias);
            if !cfg.retain_available {
                properties.retain_available = Some(0);
            }
            if session_expiry != requested_expiry {
                properties.session_expiry_interval = Some(session_expiry.as_secs() as u32);
            }
            properties.server_keep_alive = server_keepalive;
        }
        let ack = Packet::ConnAck(ConnAck {
            session_present: result.session_present,
            code: reason::SUCCESS,
            properties,
        });
        self.queue_packet(&ack);

        self.connect_keepalive = connect.keep_alive;
        self.connect_clean_start = connect.clean_start;
        tracing::info!(
            peer = %self.peer,
            client_id = %client_id,
            username = self.username.as_deref().unwrap_or(""),
            proto_ver = self.protocol.level(),
            clean_start = connect.clean_start,
            session_present = result.session_present,
            cert_cn = self.peer_cert().and_then(|c| c.cn.as_deref()).unwrap_or(""),
            "client connected"
        );
        let info = self.client_info();
        sys::client_connected(&self.broker, &info);
        self.broker.events().client_connected(&info);
        self.connected = true;
        if !config.auto_subscribe.is_empty() {
            self.subscribe_by_broker(&config.auto_subscribe);
        }
        self.limits =
            InboundLimiter::new(cfg.messages_rate, cfg.bytes_rate, Instant::now()).map(|inbound| {
                Box::new(Limits {
                    inbound,
                    paused_until: None,
                })
            });
        Ok(())
    }

    /// A resumed session's subscriptions that the ACL in force denies this connection are
    /// removed before anything is delivered through them (`access`).
    pub(super) fn recheck_restored_subscriptions(&mut self) {
        let who = access::Who {
            client_id: self.client_id.as_str(),
            username: self.username.as_deref(),
            peer: self.peer,
        };
        access::recheck_restored_subscriptions(&self.broker, &mut self.acl, who, self.session);
    }

    /// Subscription by broker: subscribes the client to the `[[auto_subscribe]]` topics, as
    /// if it had sent SUBSCRIBE right after CONNECT (retained messages follow the CONNACK).
    pub(super) fn subscribe_by_broker(&mut self, rules: &[AutoSubscribe]) {
        let (filters, skipped) = auto_subscribe::subscriptions_for(
            rules,
            &self.client_id,
            self.username.as_deref(),
            self.protocol.is_v5(),
        );
        for (template, why) in skipped {
            conn_event!(
                warn,
                self,
                template,
                "auto subscribe skipped: {}",
                why.as_str()
            );
        }
        if filters.is_empty() {
            return;
        }
        let now = Instant::now();
        let session = self.session;
        let reasons = self
            .broker
            .with_router(|r| r.subscribe(session, &filters, None, now));
        for ((filter, opts), code) in filters.iter().zip(&reasons) {
            if *code >= 0x80 {
                conn_event!(warn, self, filter = %filter, reason = code, "auto subscribe refused");
            } else {
                conn_event!(debug, self, filter = %filter, qos = opts.qos as u8, reason = code, "auto SUBSCRIBE");
            }
        }
    }

    /// Queues a refusing CONNACK and logs why.
    pub(super) fn refuse(&mut self, code: u8, why: &str) -> Close {
        conn_event!(
            warn,
            self,
            username = self.username.as_deref().unwrap_or(""),
            "connection refused: {why}"
        );
        let ack = Packet::ConnAck(ConnAck {
            session_present: false,
            code,
            properties: Properties::default(),
        });
        self.queue_packet(&ack);
        let reason = match code {
            reason::CLIENT_IDENTIFIER_NOT_VALID
            | reason::TOPIC_NAME_INVALID
            | reason::BAD_AUTHENTICATION_METHOD
            | reason::RETAIN_NOT_SUPPORTED => DisconnectReason::ProtocolError,
            _ => DisconnectReason::NotAuthorized,
        };
        Close::new(reason, None)
    }
}
