//! The caller as the `auth` middleware verified it (`x-moa-auth-*` headers, which the host strips
//! from clients), and the permission checks the business components make with it.

use crate::reply::ApiError;

#[derive(Debug, Clone)]
pub struct Identity {
    pub subject: String,
    pub username: String,
    pub groups: Vec<String>,
}

impl Identity {
    /// The verified caller, if the request came through the auth middleware with a token.
    pub fn from_headers(headers: &http::HeaderMap) -> Option<Identity> {
        let text = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let subject = text("x-moa-auth-subject").filter(|s| !s.is_empty())?;
        let groups = text("x-moa-auth-groups")
            .unwrap_or_default()
            .split(',')
            .map(|g| g.trim().to_string())
            .filter(|g| !g.is_empty())
            .collect();
        Some(Identity {
            username: text("x-moa-auth-username").unwrap_or_else(|| subject.clone()),
            subject,
            groups,
        })
    }

    /// The verified caller, or 401.
    pub fn required(headers: &http::HeaderMap) -> Result<Identity, ApiError> {
        Identity::from_headers(headers).ok_or_else(|| {
            ApiError::new(401, "unauthenticated", "this route needs a signed-in user")
        })
    }

    pub fn in_group(&self, group: &str) -> bool {
        self.groups.iter().any(|g| g == group)
    }

    pub fn is_admin(&self) -> bool {
        self.in_group("ADMIN")
    }

    /// 403 unless the caller is in one of `groups`.
    pub fn require_group(&self, groups: &[&str]) -> Result<(), ApiError> {
        if groups.iter().any(|g| self.in_group(g)) {
            Ok(())
        } else {
            Err(ApiError::new(
                403,
                "missing_permission",
                format!("this needs one of the groups {groups:?}"),
            ))
        }
    }

    /// 403 unless the caller owns the thing (`owner`) or is an admin.
    pub fn require_owner(&self, owner: &str) -> Result<(), ApiError> {
        if self.is_admin() || (self.in_group("OWNER") && self.subject == owner) {
            Ok(())
        } else {
            Err(ApiError::new(
                403,
                "not_owner",
                "only the store's owner (or an admin) may do this",
            ))
        }
    }
}
