//! The browser client (`static/`): built into the binary, every file under its own path
//! (`/app.js`, `/js/core/sync.js`, …, and `index.html` at `/` too), or served from
//! `--static-dir` by actix-files. The page loads `/app.js` as a native ES module, which
//! imports the others by relative URL: no bundler, no build step. A file added under
//! `static/` must be added to [`ASSETS`]; the test below fails until it is.
//!
//! Built-in files carry a strong `ETag` (a hash of their bytes, computed at compile time)
//! and `Cache-Control: no-cache`: a browser revalidates every file on each load and gets
//! `304 Not Modified` (no body) until a new binary serves new bytes.

use std::path::Path;

use actix_web::{http::header, web, HttpRequest, HttpResponse};

/// One file of the client.
pub struct Asset {
    /// Its path under `static/`, which is also its URL path (after `/`).
    pub path: &'static str,
    pub content_type: &'static str,
    pub body: &'static str,
    /// FNV-1a of `body`: the `ETag` (quoted, hex).
    pub hash: u64,
}

/// FNV-1a 64 of `s`, at compile time.
pub const fn fnv1a(s: &str) -> u64 {
    let b = s.as_bytes();
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut i = 0;
    while i < b.len() {
        h ^= b[i] as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
        i += 1;
    }
    h
}

const HTML: &str = "text/html; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";

macro_rules! asset {
    ($path:literal, $type:expr) => {
        Asset {
            path: $path,
            content_type: $type,
            body: include_str!(concat!("../../static/", $path)),
            hash: fnv1a(include_str!(concat!("../../static/", $path))),
        }
    };
}

/// Every file of `static/`.
pub const ASSETS: &[Asset] = &[
    asset!("index.html", HTML),
    asset!("app.css", CSS),
    asset!("app.js", JS),
    asset!("js/main.js", JS),
    asset!("js/core/api.js", JS),
    asset!("js/core/connection.js", JS),
    asset!("js/core/cursor.js", JS),
    asset!("js/core/governance.js", JS),
    asset!("js/core/outbox.js", JS),
    asset!("js/core/permissions.js", JS),
    asset!("js/core/protocol.js", JS),
    asset!("js/core/sync.js", JS),
    asset!("js/core/timeline.js", JS),
    asset!("js/core/unread.js", JS),
    asset!("js/view/dom.js", JS),
    asset!("js/view/governance.js", JS),
    asset!("js/view/render.js", JS),
];

impl Asset {
    fn etag(&self) -> String {
        format!("\"{:016x}\"", self.hash)
    }

    /// The file, or 304 when the request's `If-None-Match` names its tag (or `*`).
    fn response(&self, req: &HttpRequest) -> HttpResponse {
        let etag = self.etag();
        let fresh = req
            .headers()
            .get_all(header::IF_NONE_MATCH)
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|t| t.trim().trim_start_matches("W/"))
            .any(|t| t == etag || t == "*");
        let mut answer = if fresh {
            HttpResponse::NotModified()
        } else {
            HttpResponse::Ok()
        };
        answer
            .insert_header((header::ETAG, etag))
            .insert_header((header::CACHE_CONTROL, "no-cache"));
        if fresh {
            answer.finish()
        } else {
            answer.content_type(self.content_type).body(self.body)
        }
    }
}

/// The client's routes: from `dir` (`--static-dir`) when given, else the built-in files.
/// GET and HEAD; the security headers (`headers.rs`) apply as everywhere.
pub fn routes(cfg: &mut web::ServiceConfig, dir: Option<&Path>) {
    if let Some(dir) = dir {
        cfg.service(actix_files::Files::new("/", dir).index_file("index.html"));
        return;
    }
    for a in ASSETS {
        let serve = move |req: HttpRequest| async move { a.response(&req) };
        if a.path == "index.html" {
            cfg.route("/", super::get_or_head().to(serve));
        }
        cfg.route(&format!("/{}", a.path), super::get_or_head().to(serve));
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use actix_web::{http::header, test, App};

    use super::*;

    fn static_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("static")
    }

    /// Every file under `dir`, as paths relative to it with `/` separators.
    fn files(dir: &Path, prefix: &str, out: &mut Vec<String>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .expect("read static/")
            .map(|e| e.expect("dir entry").path())
            .collect();
        entries.sort();
        for p in entries {
            let name = p
                .file_name()
                .and_then(|n| n.to_str())
                .expect("a UTF-8 name");
            let rel = format!("{prefix}{name}");
            if p.is_dir() {
                files(&p, &format!("{rel}/"), out);
            } else {
                out.push(rel);
            }
        }
    }

    fn expected_type(path: &str) -> &'static str {
        match path.rsplit('.').next() {
            Some("html") => "text/html",
            Some("js") => "text/javascript",
            Some("css") => "text/css",
            other => {
                panic!("static/{path}: no content type for {other:?}: add it here and to ASSETS")
            }
        }
    }

    async fn get_all(dir: Option<&Path>, paths: &[String]) {
        let app = test::init_service(
            App::new()
                .wrap(super::super::headers::Security)
                .configure(|c| routes(c, dir)),
        )
        .await;
        for path in paths {
            let req = test::TestRequest::get()
                .uri(&format!("/{path}"))
                .to_request();
            let resp = test::call_service(&app, req).await;
            assert_eq!(resp.status(), 200, "GET /{path} (static dir: {dir:?})");
            let ct = resp
                .headers()
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .expect("content type")
                .to_owned();
            let want = expected_type(path);
            // actix-files names JavaScript by mime_guess; both are JavaScript MIME types
            // that browsers accept for module scripts.
            let ok = ct.starts_with(want)
                || (want == "text/javascript" && ct.starts_with("application/javascript"));
            assert!(ok, "GET /{path}: content type {ct}, want {want}");
            // Module scripts come from 'self' under the page's policy, never sniffed.
            let h = resp.headers();
            assert_eq!(
                h.get(header::X_CONTENT_TYPE_OPTIONS).map(|v| v.as_bytes()),
                Some(&b"nosniff"[..])
            );
            let csp = h
                .get(header::CONTENT_SECURITY_POLICY)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            assert!(csp.contains("script-src 'self';"), "GET /{path}: {csp}");
            let body = test::read_body(resp).await;
            let file = std::fs::read(static_dir().join(path)).expect("read the file");
            assert!(body == file, "GET /{path}: not the file's bytes (rebuild?)");
        }
        let resp = test::call_service(&app, test::TestRequest::get().uri("/").to_request()).await;
        assert_eq!(resp.status(), 200, "GET / (static dir: {dir:?})");
        let body = test::read_body(resp).await;
        assert!(body == std::fs::read(static_dir().join("index.html")).expect("index.html"));
    }

    #[actix_web::test]
    async fn every_file_under_static_is_served_built_in_and_from_the_static_dir() {
        let mut paths = Vec::new();
        files(&static_dir(), "", &mut paths);
        assert!(paths.iter().any(|p| p == "js/core/sync.js"), "{paths:?}");
        let table: Vec<&str> = ASSETS.iter().map(|a| a.path).collect();
        for p in &paths {
            assert!(
                table.contains(&p.as_str()),
                "static/{p} is not in src/http/assets.rs ASSETS: the built-in client would miss it"
            );
        }
        assert_eq!(table.len(), paths.len(), "ASSETS lists a file twice");
        get_all(None, &paths).await;
        get_all(Some(&static_dir()), &paths).await;
    }

    #[actix_web::test]
    async fn head_answers_like_get_and_unknown_files_are_404() {
        let app = test::init_service(App::new().configure(|c| routes(c, None))).await;
        let req = test::TestRequest::default()
            .method(actix_web::http::Method::HEAD)
            .uri("/js/core/sync.js")
            .to_request();
        let resp = test::call_service(&app, req).await;
        assert_eq!(resp.status(), 200);
        let req = test::TestRequest::get()
            .uri("/js/core/nope.js")
            .to_request();
        assert_eq!(test::call_service(&app, req).await.status(), 404);
    }

    #[actix_web::test]
    async fn a_browser_revalidates_with_the_etag_and_gets_304() {
        let app = test::init_service(App::new().configure(|c| routes(c, None))).await;
        let req = test::TestRequest::get()
            .uri("/js/core/sync.js")
            .to_request();
        let resp = test::call_service(&app, req).await;
        assert_eq!(resp.status(), 200);
        let etag = resp
            .headers()
            .get(header::ETAG)
            .and_then(|v| v.to_str().ok())
            .expect("an ETag")
            .to_owned();
        assert!(etag.starts_with('"') && etag.ends_with('"'), "{etag}");
        // The tag, in a list, weak or as `*`: not modified, no body.
        for inm in [etag.clone(), format!("\"x\", W/{etag}"), "*".to_owned()] {
            let req = test::TestRequest::get()
                .uri("/js/core/sync.js")
                .insert_header((header::IF_NONE_MATCH, inm.as_str()))
                .to_request();
            let resp = test::call_service(&app, req).await;
            assert_eq!(resp.status(), 304, "If-None-Match: {inm}");
            assert_eq!(
                resp.headers()
                    .get(header::ETAG)
                    .and_then(|v| v.to_str().ok()),
                Some(etag.as_str())
            );
            assert!(test::read_body(resp).await.is_empty());
        }
        // Another file's tag, or a stale one: the file.
        let other = ASSETS
            .iter()
            .find(|a| a.path == "app.js")
            .map(Asset::etag)
            .expect("app.js");
        assert_ne!(other, etag);
        let req = test::TestRequest::get()
            .uri("/js/core/sync.js")
            .insert_header((header::IF_NONE_MATCH, other.as_str()))
            .to_request();
        let resp = test::call_service(&app, req).await;
        assert_eq!(resp.status(), 200);
        assert!(!test::read_body(resp).await.is_empty());
    }
}
