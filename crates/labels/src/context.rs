use std::fmt;
use std::str::FromStr;

use crate::error::{ErrorKind, ParseError};
use crate::level::{Level, MlsLimits, MlsRange, serde_via_string};

/// A policy identifier: a user, role or type name.
///
/// The policy language allows a letter or `_` followed by letters, digits, `_`, `.`, `-`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Identifier(String);

impl Identifier {
    /// Validates and wraps an identifier.
    pub fn new(s: &str) -> Result<Identifier, ParseError> {
        Self::parse_at(s, 0, "identifier")
    }

    fn parse_at(s: &str, pos: usize, field: &'static str) -> Result<Identifier, ParseError> {
        let mut bytes = s.bytes();
        match bytes.next() {
            None => return Err(ParseError::new(pos, s, ErrorKind::MissingField(field))),
            Some(b) if b.is_ascii_alphabetic() || b == b'_' => {}
            Some(_) => return Err(ParseError::new(pos, s, ErrorKind::BadIdentifier)),
        }
        if s.len() > 256
            || !bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
        {
            return Err(ParseError::new(pos, s, ErrorKind::BadIdentifier));
        }
        Ok(Identifier(s.to_owned()))
    }

    /// The identifier's text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Identifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Identifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

/// A security context `user:role:type[:low[-high]]`.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Context {
    /// SELinux user, e.g. `system_u`.
    pub user: Identifier,
    /// Role, e.g. `system_r` or `object_r`.
    pub role: Identifier,
    /// Type (domain for processes), e.g. `svirt_t`.
    pub type_: Identifier,
    /// The MLS/MCS range; `None` for a policy without MLS.
    pub range: Option<MlsRange>,
}

impl Context {
    /// Parses a context with the default (maximum) MLS limits.
    pub fn parse(s: &str) -> Result<Context, ParseError> {
        Self::parse_with(s, MlsLimits::default())
    }

    /// Parses a context against the policy's MLS limits.
    pub fn parse_with(s: &str, limits: MlsLimits) -> Result<Context, ParseError> {
        if s.is_empty() {
            return Err(ParseError::new(0, s, ErrorKind::Empty));
        }
        // The kernel tolerates one trailing NUL (it is how xattr values are often stored).
        let s = s.strip_suffix('\0').unwrap_or(s);
        let mut parts = s.splitn(4, ':');
        let mut pos = 0;
        let mut next = |field: &'static str| -> Result<(&str, usize), ParseError> {
            match parts.next() {
                Some(p) => {
                    let at = pos;
                    pos += p.len() + 1;
                    Ok((p, at))
                }
                None => Err(ParseError::new(s.len(), s, ErrorKind::MissingField(field))),
            }
        };
        let (u, up) = next("user")?;
        let (r, rp) = next("role")?;
        let (t, tp) = next("type")?;
        let user = Identifier::parse_at(u, up, "user")?;
        let role = Identifier::parse_at(r, rp, "role")?;
        let type_ = Identifier::parse_at(t, tp, "type")?;
        let range = match parts.next() {
            None => None,
            Some(rest) => Some(MlsRange::parse_with(rest, limits).map_err(|e| e.offset(pos))?),
        };
        Ok(Context {
            user,
            role,
            type_,
            range,
        })
    }

    /// The low (effective) level, if the context has one.
    pub fn level(&self) -> Option<Level> {
        self.range.map(|r| r.low)
    }

    /// The same context with another range.
    pub fn with_range(&self, range: MlsRange) -> Context {
        Context {
            range: Some(range),
            ..self.clone()
        }
    }

    /// The same context with another type.
    pub fn with_type(&self, type_: Identifier) -> Context {
        Context {
            type_,
            ..self.clone()
        }
    }
}

impl fmt::Display for Context {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.user, self.role, self.type_)?;
        if let Some(r) = &self.range {
            write!(f, ":{r}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Context {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Context({self})")
    }
}

impl FromStr for Context {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Context::parse(s)
    }
}

impl FromStr for Identifier {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Identifier::new(s)
    }
}

serde_via_string!(Context);
serde_via_string!(Identifier);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contexts() {
        let c = Context::parse("system_u:system_r:svirt_t:s0:c264,c41").unwrap();
        assert_eq!(c.to_string(), "system_u:system_r:svirt_t:s0:c41,c264");
        assert_eq!(c.type_.as_str(), "svirt_t");
        let c = Context::parse("system_u:system_r:virtd_t:s0-s0:c0.c1023").unwrap();
        assert_eq!(c.to_string(), "system_u:system_r:virtd_t:s0-s0:c0.c1023");
        assert_eq!(Context::parse("u:r:t").unwrap().range, None);
        assert_eq!(
            Context::parse("u:r:t:s0\0").unwrap().to_string(),
            "u:r:t:s0"
        );
    }

    #[test]
    fn context_errors_point_at_the_token() {
        let e = Context::parse("system_u:system_r").unwrap_err();
        assert_eq!(e.kind, ErrorKind::MissingField("type"));
        let e = Context::parse("system_u:sys!em_r:t:s0").unwrap_err();
        assert_eq!((e.pos, e.token.as_str()), (9, "sys!em_r"));
        let e = Context::parse("u:r:t:s0:c1,c2000").unwrap_err();
        assert_eq!((e.pos, e.token.as_str()), (12, "c2000"));
        let e = Context::parse("u:r:t:s0-s0:c3.c1").unwrap_err();
        assert_eq!((e.pos, e.token.as_str()), (12, "c3.c1"));
        let e = Context::parse("u:r::s0").unwrap_err();
        assert_eq!(e.kind, ErrorKind::MissingField("type"));
        assert!(Context::parse("").is_err());
        assert!(Context::parse("u:r:t:").is_err());
    }

    #[test]
    fn serde_roundtrip() {
        let c = Context::parse("system_u:object_r:svirt_image_t:s0:c1,c2").unwrap();
        let json = format!("\"{c}\"");
        let back: Context = serde_json_like(&json);
        assert_eq!(back, c);
    }

    // Tiny helper so the pure crate needs no serde_json: deserialize from a quoted str.
    fn serde_json_like(quoted: &str) -> Context {
        let inner = quoted.trim_matches('"');
        inner.parse().unwrap()
    }
}
