//! The browser client (`static/`): built into the binary, every file under its own path
//! (`/app.js`, `/js/core/sync.js`, …, and `index.html` at `/` too), or served from
//! `--static-dir` by actix-files. The page loads `/app.js` as a native ES module, which
//! imports the others by relative URL: no bundler, no build step. A file added under
//! `static/` must be added to [`ASSETS`]; the test below fails until it is.

use std::path::Path;

use actix_web::{web, HttpResponse};

/// One file of the client.
pub struct Asset {
    /// Its path under `static/`, which is also its URL path (after `/`).
    pub path: &'static str,
    pub content_type: &'static str,
    pub body: &'static str,
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
    asset!("js/core/outbox.js", JS),
    asset!("js/core/protocol.js", JS),
    asset!("js/core/sync.js", JS),
    asset!("js/core/timeline.js", JS),
    asset!("js/core/unread.js", JS),
    asset!("js/view/dom.js", JS),
    asset!("js/view/render.js", JS),
];

impl Asset {
    fn response(&self) -> HttpResponse {
        HttpResponse::Ok()
            .content_type(self.content_type)
            .insert_header(("cache-control", "no-cache"))
            .body(self.body)
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
        let serve = move || async move { a.response() };
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
}
