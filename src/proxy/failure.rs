//! Proxy failures: which are retried, how they map to OpenAI errors, what a started stream gets.

use pingora::prelude::*;
use pingora::proxy::{FailToProxy, Session};
use pingora::ErrorSource;

use super::ctx::{Cause, RequestCtx};
use super::{respond, response};
use crate::errors::GatewayError;

/// Status recorded when the client went away before the response finished (nginx's convention).
pub const CLIENT_CLOSED: u16 = 499;

pub async fn respond(session: &mut Session, e: &Error, ctx: &mut RequestCtx) -> FailToProxy {
    ctx.restore_session(session);
    let no_reuse = |code| FailToProxy {
        error_code: code,
        can_reuse_downstream: false,
    };
    let cause = ctx.cause(e);
    let refused = matches!(cause, Cause::Refused(_));
    match cause {
        Cause::Timeout(kind) => ctx.error = Some(kind.error()),
        Cause::ClientGone => {
            ctx.client_gone = true;
            ctx.status = Some(CLIENT_CLOSED);
            return no_reuse(0);
        }
        Cause::Refused(refusal) => {
            // the rest of the body is unread: answer, then close the connection
            session.set_keepalive(None);
            ctx.error = Some(refusal);
        }
        Cause::Other => {}
    }
    // a status the gateway turned into an error carries its reason in the plan
    let planned = matches!(e.etype(), HTTPStatus(_)).then(|| ctx.plan.last_error.clone());
    let gerr = ctx
        .error
        .clone()
        .or(planned.flatten())
        .unwrap_or_else(|| classify(e));
    tracing::debug!(request_id = %ctx.request_id, error = %e, label = gerr.label(), "proxy failed");
    if session.response_written().is_some() {
        // headers are gone: a stream gets a final error event, anything else is cut off
        if let Some(tail) = response::stream_error_tail(ctx, &gerr) {
            if let Err(we) = session.write_response_body(Some(tail), true).await {
                tracing::debug!(request_id = %ctx.request_id, error = %we, "could not deliver the stream error event");
            }
        }
        ctx.error = Some(gerr);
        return no_reuse(0);
    }
    let status = gerr.status().as_u16();
    let body = gerr.body_for(ctx.api);
    let written = respond::write(session, ctx, status, &body).await;
    ctx.error = Some(gerr);
    match written {
        Ok(()) if !refused => FailToProxy {
            error_code: status,
            can_reuse_downstream: true,
        },
        _ => no_reuse(status),
    }
}

/// Maps a Pingora error to the client-facing failure.
pub fn classify(e: &Error) -> GatewayError {
    match e.etype() {
        ConnectTimedout => GatewayError::UpstreamConnectTimeout,
        ReadTimedout | WriteTimedout => GatewayError::UpstreamTimeout,
        ConnectRefused | ConnectNoRoute | ConnectError | TLSHandshakeFailure
        | TLSHandshakeTimedout | InvalidCert | HandshakeError | SocketError | BindError => {
            GatewayError::UpstreamUnreachable
        }
        ConnectionClosed | ReadError | WriteError | H2Error | H2Downgrade => {
            GatewayError::UpstreamClosed
        }
        InvalidHTTPHeader | H1Error | InvalidH2 => GatewayError::UpstreamProtocol,
        HTTPStatus(code) => GatewayError::UpstreamStatus(*code),
        _ => match e.esource() {
            ErrorSource::Upstream => GatewayError::UpstreamProtocol,
            _ => GatewayError::Internal,
        },
    }
}
