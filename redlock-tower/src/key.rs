//! Which lock a request needs: [`MakeLockKey`] and the ready-made key makers.

use std::{fmt, sync::Arc};

use http::{HeaderName, Request};

use crate::error::{Error, Result};

/// Derives the lock key of a request, or `None` to let it through without a lock.
///
/// Implemented by closures `FnMut(&Req) -> Option<String>`, by [`KeyFromHeader`] and by
/// [`KeyFromPath`]. The key is the Redlock resource name, so two requests that must not run at
/// the same time anywhere in the fleet must map to the same key, and every replica must derive
/// it the same way. Return `None` rather than an empty key: redlock-core refuses empty keys, and
/// the request would get [`Rejection::Unavailable`](crate::Rejection::Unavailable).
///
/// ```
/// use http::Request;
/// use redlock_tower::MakeLockKey;
///
/// let mut by_order = |req: &Request<()>| {
///     req.uri().query()?.strip_prefix("order=").map(|id| format!("order:{id}"))
/// };
/// let req = Request::get("/ship?order=42").body(())?;
/// assert_eq!(by_order.make_key(&req).as_deref(), Some("order:42"));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub trait MakeLockKey<Req> {
    /// The key for `request`; `None` passes it to the inner service unlocked.
    fn make_key(&mut self, request: &Req) -> Option<String>;
}

impl<F, Req> MakeLockKey<Req> for F
where
    F: FnMut(&Req) -> Option<String>,
{
    fn make_key(&mut self, request: &Req) -> Option<String> {
        self(request)
    }
}

/// Keys a request by the value of one header: `x-account-id: 42` gives `x-account-id:42`.
///
/// A request without the header, or whose value is empty or not visible ASCII, gets no key and
/// is not locked. If the header is mandatory, reject such requests before this layer (or in the
/// handler). When the header repeats, the first value counts, as with [`HeaderMap::get`].
///
/// ```
/// use http::Request;
/// use redlock_tower::{KeyFromHeader, MakeLockKey};
///
/// let mut key = KeyFromHeader::new("x-account-id")?.prefix("account:");
/// let req = Request::post("/withdraw").header("x-account-id", "42").body(())?;
/// assert_eq!(key.make_key(&req).as_deref(), Some("account:42"));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// [`HeaderMap::get`]: http::HeaderMap::get
#[derive(Clone, Debug)]
pub struct KeyFromHeader {
    name: HeaderName,
    prefix: String,
}

impl KeyFromHeader {
    /// Keys requests by the header `name` (case-insensitive).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidHeaderName`] when `name` is not a valid header name.
    pub fn new(name: &str) -> Result<Self> {
        HeaderName::from_bytes(name.as_bytes())
            .map(Self::from)
            .map_err(|source| Error::InvalidHeaderName {
                name: name.to_owned(),
                source,
            })
    }

    /// Sets what goes before the header value in the key. Defaults to the header name and a
    /// colon (`x-account-id:`), so keys taken from different headers never collide.
    #[must_use]
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }
}

impl From<HeaderName> for KeyFromHeader {
    fn from(name: HeaderName) -> Self {
        let prefix = format!("{name}:");
        KeyFromHeader { name, prefix }
    }
}

impl<B> MakeLockKey<Request<B>> for KeyFromHeader {
    fn make_key(&mut self, request: &Request<B>) -> Option<String> {
        let value = request.headers().get(&self.name)?.to_str().ok()?.trim();
        (!value.is_empty()).then(|| format!("{}{value}", self.prefix))
    }
}

/// Keys a request by parameters of its path, with no router involved: the template
/// `/accounts/{id}/withdraw` and the key format `account:{id}` turn `POST /accounts/42/withdraw`
/// into `account:42`.
///
/// Templates use axum 0.8's syntax: `{name}` matches one non-empty segment and `{*name}` (last
/// segment only) the non-empty rest of the path. Parameters are percent-decoded, as axum's `Path`
/// extractor does, so `/accounts/%34%32/withdraw` locks `account:42` too; a parameter that does
/// not decode to UTF-8 gives no key. Literal segments match exactly. Several routes can share
/// one key maker with [`route`](KeyFromPath::route); the first match wins. A path that matches
/// no route gets no key and is not locked.
///
/// The path is the one the service sees: inside an axum router `nest`ed under a prefix, the
/// prefix has already been stripped.
///
/// ```
/// use http::Request;
/// use redlock_tower::{KeyFromPath, MakeLockKey};
///
/// let mut key = KeyFromPath::new("/accounts/{id}/withdraw", "account:{id}")?
///     .route("/accounts/{id}/deposit", "account:{id}")?;
/// let req = Request::post("/accounts/42/deposit").body(())?;
/// assert_eq!(key.make_key(&req).as_deref(), Some("account:42"));
/// let req = Request::get("/accounts/42").body(())?;
/// assert_eq!(key.make_key(&req), None);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct KeyFromPath {
    /// Shared so that cloning the key maker into every service and request stays cheap.
    routes: Arc<Vec<Route>>,
}

#[derive(Clone)]
struct Route {
    source: String,
    segments: Vec<Segment>,
    key: Vec<Piece>,
}

#[derive(Clone)]
enum Segment {
    Literal(String),
    Param,
    Rest,
}

#[derive(Clone)]
enum Piece {
    Text(String),
    /// Index of the captured parameter, in template order.
    Param(usize),
}

impl KeyFromPath {
    /// A key maker for one route: requests whose path matches `template` get the key `key`,
    /// with each `{name}` replaced by the parameter's value.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidTemplate`] when the template does not start with `/`, has a brace that is
    /// not a whole-segment `{name}` or a final `{*name}`, repeats a name, or when the key format
    /// names a parameter that the template does not have.
    pub fn new(template: &str, key: &str) -> Result<Self> {
        Ok(KeyFromPath {
            routes: Arc::new(vec![Route::parse(template, key)?]),
        })
    }

    /// Adds a route, tried after the ones before it.
    ///
    /// # Errors
    ///
    /// As [`new`](KeyFromPath::new).
    pub fn route(self, template: &str, key: &str) -> Result<Self> {
        let mut routes = Arc::unwrap_or_clone(self.routes);
        routes.push(Route::parse(template, key)?);
        Ok(KeyFromPath {
            routes: Arc::new(routes),
        })
    }

    /// The key for `path`, if a route matches it.
    fn key_for(&self, path: &str) -> Option<String> {
        self.routes.iter().find_map(|route| route.key_for(path))
    }
}

impl fmt::Debug for KeyFromPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.routes.iter().map(|r| &r.source))
            .finish()
    }
}

impl<B> MakeLockKey<Request<B>> for KeyFromPath {
    fn make_key(&mut self, request: &Request<B>) -> Option<String> {
        self.key_for(request.uri().path())
    }
}

impl Route {
    fn parse(template: &str, key: &str) -> Result<Route> {
        let invalid = |template: &str, reason| Error::InvalidTemplate {
            template: template.to_owned(),
            reason,
        };
        let Some(path) = template.strip_prefix('/') else {
            return Err(invalid(template, "must start with '/'"));
        };
        let mut names: Vec<&str> = Vec::new();
        let mut segments = Vec::new();
        let parts: Vec<&str> = if path.is_empty() {
            Vec::new()
        } else {
            path.split('/').collect()
        };
        for (i, part) in parts.iter().enumerate() {
            let segment = match part.strip_prefix('{').and_then(|p| p.strip_suffix('}')) {
                Some(name) => {
                    let (name, segment) = match name.strip_prefix('*') {
                        Some(rest) if i + 1 == parts.len() => (rest, Segment::Rest),
                        Some(_) => {
                            return Err(invalid(template, "{*name} must be the last segment"));
                        }
                        None => (name, Segment::Param),
                    };
                    if !is_name(name) {
                        return Err(invalid(
                            template,
                            "parameter names are letters, digits, '_'",
                        ));
                    }
                    if names.contains(&name) {
                        return Err(invalid(template, "a parameter name is repeated"));
                    }
                    names.push(name);
                    segment
                }
                None if part.contains(['{', '}']) => {
                    return Err(invalid(template, "parameters must be whole segments"));
                }
                None => Segment::Literal((*part).to_owned()),
            };
            segments.push(segment);
        }
        Ok(Route {
            source: template.to_owned(),
            segments,
            key: parse_key(key, &names).map_err(|reason| invalid(key, reason))?,
        })
    }

    fn key_for(&self, path: &str) -> Option<String> {
        let mut rest = path.strip_prefix('/')?;
        let mut values = Vec::new();
        let mut segments = self.segments.iter().peekable();
        if segments.peek().is_none() {
            return rest.is_empty().then(|| self.render(&values));
        }
        while let Some(segment) = segments.next() {
            let last = segments.peek().is_none();
            let (part, tail) = match segment {
                Segment::Rest => (rest, None),
                _ => match rest.split_once('/') {
                    Some((part, tail)) => (part, Some(tail)),
                    None => (rest, None),
                },
            };
            match segment {
                Segment::Literal(literal) if literal == part => {}
                Segment::Literal(_) => return None,
                Segment::Param | Segment::Rest if part.is_empty() => return None,
                Segment::Param | Segment::Rest => values.push(percent_decode(part)?),
            }
            match (tail, last) {
                (Some(tail), false) => rest = tail,
                (None, true) => {}
                // More path than template, or more template than path.
                _ => return None,
            }
        }
        Some(self.render(&values))
    }

    fn render(&self, values: &[String]) -> String {
        let mut key = String::new();
        for piece in &self.key {
            match piece {
                Piece::Text(text) => key.push_str(text),
                Piece::Param(i) => key.push_str(values.get(*i).map_or("", String::as_str)),
            }
        }
        key
    }
}

fn is_name(name: &str) -> bool {
    !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn parse_key(format: &str, names: &[&str]) -> Result<Vec<Piece>, &'static str> {
    if format.is_empty() {
        return Err("the key format is empty");
    }
    let mut pieces = Vec::new();
    let mut rest = format;
    while let Some(open) = rest.find(['{', '}']) {
        if rest[open..].starts_with('}') {
            return Err("unmatched '}' in the key format");
        }
        let Some(close) = rest[open..].find('}') else {
            return Err("unmatched '{' in the key format");
        };
        let name = &rest[open + 1..open + close];
        let Some(index) = names.iter().position(|n| *n == name) else {
            return Err("the key format names a parameter the template does not have");
        };
        if open > 0 {
            pieces.push(Piece::Text(rest[..open].to_owned()));
        }
        pieces.push(Piece::Param(index));
        rest = &rest[open + close + 1..];
    }
    if !rest.is_empty() {
        pieces.push(Piece::Text(rest.to_owned()));
    }
    Ok(pieces)
}

/// Decodes `%XX` escapes, leaving malformed ones as they are (as the `percent-encoding` crate
/// behind axum's `Path` does); `None` when the result is not UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = match bytes.get(i..i + 3) {
            Some([b'%', hi, lo]) => hex(*hi).zip(hex(*lo)).map(|(h, l)| h << 4 | l),
            _ => None,
        };
        match escaped {
            Some(byte) => {
                out.push(byte);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

fn hex(digit: u8) -> Option<u8> {
    char::from(digit)
        .to_digit(16)
        .and_then(|d| u8::try_from(d).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(template: &str, format: &str, path: &str) -> Option<String> {
        KeyFromPath::new(template, format).unwrap().key_for(path)
    }

    #[test]
    fn path_params_fill_the_key_format() {
        assert_eq!(
            key(
                "/accounts/{id}/withdraw",
                "account:{id}",
                "/accounts/42/withdraw"
            )
            .as_deref(),
            Some("account:42")
        );
        assert_eq!(
            key("/a/{x}/b/{y}", "{y}-{x}!", "/a/1/b/2").as_deref(),
            Some("2-1!")
        );
        assert_eq!(
            key("/files/{*path}", "file:{path}", "/files/a/b.txt").as_deref(),
            Some("file:a/b.txt")
        );
        assert_eq!(key("/", "root", "/").as_deref(), Some("root"));
        assert_eq!(
            key("/reports/nightly", "report", "/reports/nightly").as_deref(),
            Some("report")
        );
    }

    #[test]
    fn paths_that_do_not_match_get_no_key() {
        let t = "/accounts/{id}/withdraw";
        for path in [
            "/accounts/42",
            "/accounts/42/withdraw/",
            "/accounts/42/withdraw/more",
            "/accounts//withdraw",
            "/accounts/42/deposit",
            "/Accounts/42/withdraw",
            "accounts/42/withdraw",
            "/",
        ] {
            assert_eq!(key(t, "a:{id}", path), None, "{path}");
        }
        assert_eq!(key("/files/{*path}", "{path}", "/files/"), None);
        assert_eq!(key("/", "root", "/x"), None);
    }

    #[test]
    fn params_are_percent_decoded_like_axum_path() {
        let t = "/accounts/{id}/withdraw";
        assert_eq!(
            key(t, "a:{id}", "/accounts/%34%32/withdraw").as_deref(),
            Some("a:42")
        );
        assert_eq!(
            key(t, "a:{id}", "/accounts/caf%C3%A9/withdraw").as_deref(),
            Some("a:café")
        );
        assert_eq!(
            key(t, "a:{id}", "/accounts/100%/withdraw").as_deref(),
            Some("a:100%")
        );
        assert_eq!(key(t, "a:{id}", "/accounts/%FF/withdraw"), None);
    }

    #[test]
    fn first_matching_route_wins() {
        let maker = KeyFromPath::new("/a/{id}", "first:{id}")
            .unwrap()
            .route("/a/{id}", "second:{id}")
            .unwrap()
            .route("/b/{id}", "b:{id}")
            .unwrap();
        assert_eq!(maker.key_for("/a/1").as_deref(), Some("first:1"));
        assert_eq!(maker.key_for("/b/1").as_deref(), Some("b:1"));
        assert_eq!(maker.key_for("/c/1"), None);
    }

    #[test]
    fn malformed_templates_are_typed_errors() {
        for (template, format) in [
            ("accounts/{id}", "{id}"),
            ("/accounts/{id", "{id}"),
            ("/accounts/x{id}", "{id}"),
            ("/accounts/{}", "x"),
            ("/a/{*rest}/b", "{rest}"),
            ("/a/{id}/{id}", "{id}"),
            ("/a/{id}", "{other}"),
            ("/a/{id}", "{id"),
            ("/a/{id}", "id}"),
            ("/a/{id}", ""),
        ] {
            let err = KeyFromPath::new(template, format).err();
            assert!(
                matches!(err, Some(Error::InvalidTemplate { .. })),
                "{template} {format}: {err:?}"
            );
        }
    }

    #[test]
    fn header_keys_are_prefixed_and_skip_unusable_values() {
        let mut maker = KeyFromHeader::new("X-Account-Id").unwrap();
        let req = |value: &[u8]| {
            Request::get("/")
                .header(
                    "x-account-id",
                    http::HeaderValue::from_bytes(value).unwrap(),
                )
                .body(())
                .unwrap()
        };
        assert_eq!(
            maker.make_key(&req(b"42")).as_deref(),
            Some("x-account-id:42")
        );
        assert_eq!(maker.make_key(&req(b"")), None);
        assert_eq!(maker.make_key(&req(b"caf\xc3\xa9")), None);
        assert_eq!(maker.make_key(&Request::new(())), None);
        assert!(matches!(
            KeyFromHeader::new("not a header"),
            Err(Error::InvalidHeaderName { .. })
        ));
    }
}
