//! Who may do what in a room: the one permission table, and the rules of acting on
//! another member. Pure: the HTTP handlers, the gateway's send path and the store's
//! apply step ask it; the authorization matrix test (`tests/it/governance.rs`) derives
//! every expected answer from it.

use serde::{Deserialize, Serialize};

use crate::model::{RoomKind, Visibility};

/// A member's role in a room, lowest first (the order is the rank).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Member,
    Moderator,
    Admin,
    Owner,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Member, Role::Moderator, Role::Admin, Role::Owner];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Member => "member",
            Role::Moderator => "moderator",
            Role::Admin => "admin",
            Role::Owner => "owner",
        }
    }
    pub fn parse(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

/// Everything the table rules on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// History, subscribe, members, receipts.
    Read,
    /// Send, edit and delete one's own messages, react, mark read.
    Send,
    Invite,
    /// Create, list and revoke invite links.
    ManageLinks,
    Kick,
    /// Mute and unmute.
    Mute,
    /// Ban and unban.
    Ban,
    DeleteOthers,
    /// Name, topic, description, visibility, slow mode.
    EditSettings,
    ChangeRoles,
    ViewModLog,
    TransferOwnership,
    DeleteRoom,
}

impl Action {
    pub const ALL: [Action; 13] = [
        Action::Read,
        Action::Send,
        Action::Invite,
        Action::ManageLinks,
        Action::Kick,
        Action::Mute,
        Action::Ban,
        Action::DeleteOthers,
        Action::EditSettings,
        Action::ChangeRoles,
        Action::ViewModLog,
        Action::TransferOwnership,
        Action::DeleteRoom,
    ];
}

/// THE table: the least role that may take `action` in a room of this kind and
/// visibility (None: nobody may). A direct message has members only: they read and send.
pub fn min_role(action: Action, kind: RoomKind, visibility: Visibility) -> Option<Role> {
    use Action::*;
    if kind == RoomKind::Dm {
        return matches!(action, Read | Send).then_some(Role::Member);
    }
    Some(match action {
        Read | Send => Role::Member,
        Invite => match (kind, visibility) {
            (RoomKind::Group, _) | (_, Visibility::Public) => Role::Member,
            _ => Role::Moderator,
        },
        ManageLinks | Kick | Mute | Ban | DeleteOthers => Role::Moderator,
        EditSettings | ChangeRoles | ViewModLog => Role::Admin,
        TransferOwnership | DeleteRoom => Role::Owner,
    })
}

/// Who is acting: their role in the room (None: not a member) and whether they are a
/// server administrator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Actor {
    pub role: Option<Role>,
    pub server_admin: bool,
}

impl Actor {
    /// The rank the actor acts with: a server administrator acts as an owner in every
    /// room, except for reading and sending (they join to read, like anyone).
    fn rank(&self, action: Action) -> Option<Role> {
        if self.server_admin && !matches!(action, Action::Read | Action::Send) {
            return Some(Role::Owner);
        }
        self.role
    }
}

/// Whether the actor may take `action` in the room (not the target rules: see
/// [`may_act_on`]).
pub fn allowed(actor: Actor, action: Action, kind: RoomKind, visibility: Visibility) -> bool {
    match (min_role(action, kind, visibility), actor.rank(action)) {
        (Some(least), Some(rank)) => rank >= least,
        _ => false,
    }
}

/// Kick, mute, ban: only someone of a lower role than the actor's (a non-member, for a
/// ban, counts as lowest). Nobody acts on themselves.
pub fn may_act_on(actor: Actor, action: Action, target: Option<Role>, self_target: bool) -> bool {
    if self_target {
        return false;
    }
    match (actor.rank(action), target) {
        (Some(rank), Some(t)) => t < rank,
        (Some(_), None) => true,
        _ => false,
    }
}

/// Changing someone's role to `to`: only an admin or above, only on someone below them,
/// only to a role below their own (ownership moves by transfer alone).
pub fn may_set_role(actor: Actor, target: Role, to: Role, self_target: bool) -> bool {
    if self_target || to == Role::Owner {
        return false;
    }
    match actor.rank(Action::ChangeRoles) {
        Some(rank) => rank >= Role::Admin && target < rank && to < rank,
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PUB: Visibility = Visibility::Public;
    const PRIV: Visibility = Visibility::Private;

    fn a(role: Option<Role>) -> Actor {
        Actor {
            role,
            server_admin: false,
        }
    }

    #[test]
    fn roles_are_ranked() {
        assert!(Role::Owner > Role::Admin && Role::Admin > Role::Moderator);
        assert!(Role::Moderator > Role::Member);
        for r in Role::ALL {
            assert_eq!(Role::parse(r.as_str()), Some(r));
        }
        assert_eq!(Role::parse("root"), None);
    }

    #[test]
    fn non_members_may_do_nothing_and_dms_have_no_governance() {
        for action in Action::ALL {
            assert!(!allowed(a(None), action, RoomKind::Room, PUB));
            let dm = allowed(a(Some(Role::Member)), action, RoomKind::Dm, PRIV);
            assert_eq!(dm, matches!(action, Action::Read | Action::Send));
        }
    }

    #[test]
    fn invites_are_open_in_public_rooms_and_groups_and_moderated_in_private_ones() {
        let m = a(Some(Role::Member));
        assert!(allowed(m, Action::Invite, RoomKind::Room, PUB));
        assert!(allowed(m, Action::Invite, RoomKind::Group, PRIV));
        assert!(!allowed(m, Action::Invite, RoomKind::Room, PRIV));
        assert!(allowed(
            a(Some(Role::Moderator)),
            Action::Invite,
            RoomKind::Room,
            PRIV
        ));
    }

    #[test]
    fn the_table_is_monotonic_in_rank() {
        for action in Action::ALL {
            for kind in [RoomKind::Room, RoomKind::Group] {
                for vis in [PUB, PRIV] {
                    let mut was = false;
                    for r in Role::ALL {
                        let now = allowed(a(Some(r)), action, kind, vis);
                        assert!(now || !was, "{action:?} allowed below {r:?} but not to it");
                        was = now;
                    }
                    assert!(was, "the owner may {action:?}");
                }
            }
        }
    }

    #[test]
    fn server_admins_govern_but_join_to_read() {
        let admin = Actor {
            role: None,
            server_admin: true,
        };
        assert!(allowed(admin, Action::DeleteRoom, RoomKind::Room, PRIV));
        assert!(allowed(admin, Action::Ban, RoomKind::Room, PUB));
        assert!(!allowed(admin, Action::Read, RoomKind::Room, PUB));
        assert!(may_act_on(admin, Action::Kick, Some(Role::Admin), false));
    }

    #[test]
    fn nobody_acts_on_an_equal_or_a_higher_role_or_on_themselves() {
        let m = a(Some(Role::Moderator));
        assert!(may_act_on(m, Action::Kick, Some(Role::Member), false));
        assert!(!may_act_on(m, Action::Kick, Some(Role::Moderator), false));
        assert!(!may_act_on(m, Action::Ban, Some(Role::Owner), false));
        assert!(may_act_on(m, Action::Ban, None, false));
        assert!(!may_act_on(m, Action::Mute, Some(Role::Member), true));
    }

    #[test]
    fn roles_are_given_below_ones_own() {
        let admin = a(Some(Role::Admin));
        let owner = a(Some(Role::Owner));
        assert!(may_set_role(admin, Role::Member, Role::Moderator, false));
        assert!(!may_set_role(admin, Role::Member, Role::Admin, false));
        assert!(!may_set_role(admin, Role::Admin, Role::Member, false));
        assert!(may_set_role(owner, Role::Admin, Role::Member, false));
        assert!(!may_set_role(owner, Role::Member, Role::Owner, false));
        assert!(!may_set_role(
            a(Some(Role::Moderator)),
            Role::Member,
            Role::Member,
            false
        ));
    }
}
