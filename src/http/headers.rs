//! Security headers on every answer: the page's Content-Security-Policy (scripts, styles and
//! connections from this origin only, never framed), `nosniff`, no referrer. Set only where
//! the handler has not set its own.

use std::future::{ready, Future, Ready};
use std::pin::Pin;

use actix_web::dev::{forward_ready, Service, ServiceRequest, ServiceResponse, Transform};
use actix_web::http::header::{self, HeaderName, HeaderValue};

/// The middleware (`App::wrap(Security)`).
pub struct Security;

impl<S, B> Transform<S, ServiceRequest> for Security
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error>,
    S::Future: 'static,
{
    type Response = ServiceResponse<B>;
    type Error = actix_web::Error;
    type Transform = SecurityService<S>;
    type InitError = ();
    type Future = Ready<Result<Self::Transform, ()>>;

    fn new_transform(&self, service: S) -> Self::Future {
        ready(Ok(SecurityService { service }))
    }
}

pub struct SecurityService<S> {
    service: S,
}

impl<S, B> Service<ServiceRequest> for SecurityService<S>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error>,
    S::Future: 'static,
{
    type Response = ServiceResponse<B>;
    type Error = actix_web::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>>>>;

    forward_ready!(service);

    fn call(&self, req: ServiceRequest) -> Self::Future {
        let csp = policy(req.headers().get(header::HOST));
        let fut = self.service.call(req);
        Box::pin(async move {
            let mut res = fut.await?;
            let h = res.headers_mut();
            let mut set = |name: HeaderName, value: HeaderValue| {
                if !h.contains_key(&name) {
                    h.insert(name, value);
                }
            };
            set(
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            );
            set(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
            set(
                header::REFERRER_POLICY,
                HeaderValue::from_static("no-referrer"),
            );
            set(header::CONTENT_SECURITY_POLICY, csp);
            Ok(res)
        })
    }
}

const BASE: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
                    img-src 'self' data:; object-src 'none'; base-uri 'none'; \
                    form-action 'self'; frame-ancestors 'none'";

/// The policy: this origin only. WebSockets to the page's own host are named (`ws://host`,
/// `wss://host`): browsers before CSP level 3 do not count them as `'self'`. A Host header
/// that is not a plain host\[:port\] names none.
fn policy(host: Option<&HeaderValue>) -> HeaderValue {
    let host = host.and_then(|h| h.to_str().ok()).filter(|h| {
        !h.is_empty()
            && h.len() <= 255
            && h.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'))
    });
    let connect = match host {
        Some(h) => format!("connect-src 'self' ws://{h} wss://{h}"),
        None => "connect-src 'self'".to_owned(),
    };
    HeaderValue::from_str(&format!("{BASE}; {connect}"))
        .unwrap_or_else(|_| HeaderValue::from_static(BASE))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_policy_names_the_host_only_when_plain() {
        let p = policy(Some(&HeaderValue::from_static("chat.example:8080")));
        let p = p.to_str().unwrap();
        assert!(
            p.contains("connect-src 'self' ws://chat.example:8080 wss://chat.example:8080"),
            "{p}"
        );
        assert!(p.contains("frame-ancestors 'none'"), "{p}");
        let p = policy(Some(&HeaderValue::from_static("evil; script-src *")));
        let p = p.to_str().unwrap();
        assert!(!p.contains("evil"), "{p}");
        assert!(p.ends_with("connect-src 'self'"), "{p}");
    }
}
