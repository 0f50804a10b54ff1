//! Ironic's provision state machine (`ironic/common/state_machine.py`), as data.
//!
//! The whole transition table is here, including the parts no code path reaches yet
//! (inspection, rescue, servicing...), so later work adds behaviour, not states.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A provision state, with Ironic's exact string values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProvisionState {
    Enroll,
    Verifying,
    Manageable,
    Available,
    Active,
    Deploying,
    /// `wait call-back` (Ironic's DEPLOYWAIT).
    DeployWait,
    DeployFailed,
    DeployHold,
    Deleting,
    Error,
    Cleaning,
    CleanWait,
    CleanFailed,
    CleanHold,
    Inspecting,
    InspectWait,
    InspectFailed,
    Adopting,
    AdoptFailed,
    Rescuing,
    RescueWait,
    RescueFailed,
    Rescue,
    Unrescuing,
    UnrescueFailed,
    Servicing,
    ServiceWait,
    ServiceFailed,
    ServiceHold,
}

use ProvisionState as S;

impl ProvisionState {
    pub const ALL: [ProvisionState; 30] = [
        S::Enroll,
        S::Verifying,
        S::Manageable,
        S::Available,
        S::Active,
        S::Deploying,
        S::DeployWait,
        S::DeployFailed,
        S::DeployHold,
        S::Deleting,
        S::Error,
        S::Cleaning,
        S::CleanWait,
        S::CleanFailed,
        S::CleanHold,
        S::Inspecting,
        S::InspectWait,
        S::InspectFailed,
        S::Adopting,
        S::AdoptFailed,
        S::Rescuing,
        S::RescueWait,
        S::RescueFailed,
        S::Rescue,
        S::Unrescuing,
        S::UnrescueFailed,
        S::Servicing,
        S::ServiceWait,
        S::ServiceFailed,
        S::ServiceHold,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            S::Enroll => "enroll",
            S::Verifying => "verifying",
            S::Manageable => "manageable",
            S::Available => "available",
            S::Active => "active",
            S::Deploying => "deploying",
            S::DeployWait => "wait call-back",
            S::DeployFailed => "deploy failed",
            S::DeployHold => "deploy hold",
            S::Deleting => "deleting",
            S::Error => "error",
            S::Cleaning => "cleaning",
            S::CleanWait => "clean wait",
            S::CleanFailed => "clean failed",
            S::CleanHold => "clean hold",
            S::Inspecting => "inspecting",
            S::InspectWait => "inspect wait",
            S::InspectFailed => "inspect failed",
            S::Adopting => "adopting",
            S::AdoptFailed => "adopt failed",
            S::Rescuing => "rescuing",
            S::RescueWait => "rescue wait",
            S::RescueFailed => "rescue failed",
            S::Rescue => "rescue",
            S::Unrescuing => "unrescuing",
            S::UnrescueFailed => "unrescue failed",
            S::Servicing => "servicing",
            S::ServiceWait => "service wait",
            S::ServiceFailed => "service failed",
            S::ServiceHold => "service hold",
        }
    }

    /// Stable states are where a node rests: those without a target.
    pub fn is_stable(self) -> bool {
        self.default_target().is_none()
    }

    /// The `target_provision_state` a node has in this state: none in stable states, which
    /// clear it (Ironic's FSM and task manager), and always one in the others.
    pub fn default_target(self) -> Option<ProvisionState> {
        match self {
            S::Verifying => Some(S::Manageable),
            S::Deploying | S::DeployWait | S::DeployFailed | S::DeployHold => Some(S::Active),
            S::Cleaning | S::CleanWait | S::CleanFailed | S::CleanHold => Some(S::Available),
            S::Deleting => Some(S::Available),
            S::Inspecting | S::InspectWait | S::InspectFailed => Some(S::Manageable),
            S::Adopting | S::AdoptFailed => Some(S::Active),
            S::Rescuing | S::RescueWait | S::RescueFailed => Some(S::Rescue),
            S::Unrescuing | S::UnrescueFailed => Some(S::Active),
            S::Servicing | S::ServiceWait | S::ServiceFailed | S::ServiceHold => Some(S::Active),
            S::Enroll | S::Manageable | S::Available | S::Active | S::Error | S::Rescue => None,
        }
    }
}

impl fmt::Display for ProvisionState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown provision state {0:?}")]
pub struct UnknownState(pub String);

impl FromStr for ProvisionState {
    type Err = UnknownState;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL.into_iter().find(|state| state.as_str() == s).ok_or_else(|| UnknownState(s.to_owned()))
    }
}

impl Serialize for ProvisionState {
    fn serialize<Ser: Serializer>(&self, serializer: Ser) -> Result<Ser::Ok, Ser::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for ProvisionState {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// An FSM event. API verbs map to these through [`Verb::event`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Event {
    Manage,
    Provide,
    Clean,
    Inspect,
    Adopt,
    Deploy,
    Rebuild,
    Delete,
    Wait,
    Resume,
    Done,
    Fail,
    Abort,
    Hold,
    Unhold,
    Rescue,
    Unrescue,
    Service,
}

impl Event {
    pub fn as_str(self) -> &'static str {
        match self {
            Event::Manage => "manage",
            Event::Provide => "provide",
            Event::Clean => "clean",
            Event::Inspect => "inspect",
            Event::Adopt => "adopt",
            Event::Deploy => "deploy",
            Event::Rebuild => "rebuild",
            Event::Delete => "delete",
            Event::Wait => "wait",
            Event::Resume => "resume",
            Event::Done => "done",
            Event::Fail => "fail",
            Event::Abort => "abort",
            Event::Hold => "hold",
            Event::Unhold => "unhold",
            Event::Rescue => "rescue",
            Event::Unrescue => "unrescue",
            Event::Service => "service",
        }
    }
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

use Event as E;

/// Every `(from, event, to)` of Ironic's state machine.
pub const TRANSITIONS: &[(ProvisionState, Event, ProvisionState)] = &[
    (S::Enroll, E::Manage, S::Verifying),
    (S::Verifying, E::Done, S::Manageable),
    (S::Verifying, E::Fail, S::Enroll),
    (S::Manageable, E::Provide, S::Cleaning),
    (S::Manageable, E::Clean, S::Cleaning),
    (S::Manageable, E::Inspect, S::Inspecting),
    (S::Manageable, E::Adopt, S::Adopting),
    (S::Available, E::Deploy, S::Deploying),
    (S::Available, E::Manage, S::Manageable),
    (S::Deploying, E::Wait, S::DeployWait),
    (S::Deploying, E::Hold, S::DeployHold),
    (S::Deploying, E::Done, S::Active),
    (S::Deploying, E::Fail, S::DeployFailed),
    (S::DeployWait, E::Resume, S::Deploying),
    (S::DeployWait, E::Hold, S::DeployHold),
    (S::DeployWait, E::Fail, S::DeployFailed),
    (S::DeployWait, E::Abort, S::DeployFailed),
    (S::DeployWait, E::Delete, S::Deleting),
    (S::DeployHold, E::Unhold, S::DeployWait),
    (S::DeployHold, E::Abort, S::DeployFailed),
    (S::DeployFailed, E::Rebuild, S::Deploying),
    (S::DeployFailed, E::Deploy, S::Deploying),
    (S::DeployFailed, E::Delete, S::Deleting),
    (S::Active, E::Rebuild, S::Deploying),
    (S::Active, E::Delete, S::Deleting),
    (S::Active, E::Rescue, S::Rescuing),
    (S::Active, E::Service, S::Servicing),
    (S::Deleting, E::Clean, S::Cleaning),
    (S::Deleting, E::Fail, S::Error),
    (S::Error, E::Rebuild, S::Deploying),
    (S::Error, E::Delete, S::Deleting),
    (S::Cleaning, E::Done, S::Available),
    (S::Cleaning, E::Manage, S::Manageable),
    (S::Cleaning, E::Wait, S::CleanWait),
    (S::Cleaning, E::Hold, S::CleanHold),
    (S::Cleaning, E::Fail, S::CleanFailed),
    (S::CleanWait, E::Resume, S::Cleaning),
    (S::CleanWait, E::Hold, S::CleanHold),
    (S::CleanWait, E::Fail, S::CleanFailed),
    (S::CleanWait, E::Abort, S::CleanFailed),
    (S::CleanHold, E::Unhold, S::CleanWait),
    (S::CleanHold, E::Abort, S::CleanFailed),
    (S::CleanFailed, E::Manage, S::Manageable),
    (S::Inspecting, E::Done, S::Manageable),
    (S::Inspecting, E::Wait, S::InspectWait),
    (S::Inspecting, E::Fail, S::InspectFailed),
    (S::InspectWait, E::Done, S::Manageable),
    (S::InspectWait, E::Resume, S::Inspecting),
    (S::InspectWait, E::Fail, S::InspectFailed),
    (S::InspectWait, E::Abort, S::InspectFailed),
    (S::InspectFailed, E::Manage, S::Manageable),
    (S::InspectFailed, E::Inspect, S::Inspecting),
    (S::Adopting, E::Done, S::Active),
    (S::Adopting, E::Fail, S::AdoptFailed),
    (S::AdoptFailed, E::Adopt, S::Adopting),
    (S::AdoptFailed, E::Manage, S::Manageable),
    (S::Rescuing, E::Done, S::Rescue),
    (S::Rescuing, E::Wait, S::RescueWait),
    (S::Rescuing, E::Fail, S::RescueFailed),
    (S::RescueWait, E::Resume, S::Rescuing),
    (S::RescueWait, E::Fail, S::RescueFailed),
    (S::RescueWait, E::Abort, S::RescueFailed),
    (S::RescueWait, E::Delete, S::Deleting),
    (S::Rescue, E::Rescue, S::Rescuing),
    (S::Rescue, E::Unrescue, S::Unrescuing),
    (S::Rescue, E::Delete, S::Deleting),
    (S::RescueFailed, E::Rescue, S::Rescuing),
    (S::RescueFailed, E::Unrescue, S::Unrescuing),
    (S::RescueFailed, E::Delete, S::Deleting),
    (S::Unrescuing, E::Done, S::Active),
    (S::Unrescuing, E::Fail, S::UnrescueFailed),
    (S::UnrescueFailed, E::Rescue, S::Rescuing),
    (S::UnrescueFailed, E::Unrescue, S::Unrescuing),
    (S::UnrescueFailed, E::Delete, S::Deleting),
    (S::Servicing, E::Done, S::Active),
    (S::Servicing, E::Fail, S::ServiceFailed),
    (S::Servicing, E::Wait, S::ServiceWait),
    (S::Servicing, E::Hold, S::ServiceHold),
    (S::ServiceWait, E::Resume, S::Servicing),
    (S::ServiceWait, E::Fail, S::ServiceFailed),
    (S::ServiceWait, E::Abort, S::ServiceFailed),
    (S::ServiceWait, E::Hold, S::ServiceHold),
    (S::ServiceWait, E::Delete, S::Deleting),
    (S::ServiceHold, E::Service, S::Servicing),
    (S::ServiceHold, E::Unhold, S::ServiceWait),
    (S::ServiceHold, E::Fail, S::ServiceFailed),
    (S::ServiceHold, E::Abort, S::ServiceFailed),
    (S::ServiceFailed, E::Service, S::Servicing),
    (S::ServiceFailed, E::Rescue, S::Rescuing),
    (S::ServiceFailed, E::Wait, S::ServiceWait),
    (S::ServiceFailed, E::Hold, S::ServiceHold),
    (S::ServiceFailed, E::Delete, S::Deleting),
    (S::ServiceFailed, E::Abort, S::Active),
];

/// The state `event` leads to from `from`, or `None` when Ironic would refuse it.
pub fn next_state(from: ProvisionState, event: Event) -> Option<ProvisionState> {
    TRANSITIONS.iter().find(|(f, e, _)| *f == from && *e == event).map(|(_, _, to)| *to)
}

/// States in which a ramdisk agent may look itself up (`LOOKUP_ALLOWED_STATES`); they are
/// also the states in which a node boots the ramdisk.
pub const LOOKUP_ALLOWED_STATES: &[ProvisionState] = &[
    S::Deploying,
    S::DeployWait,
    S::Cleaning,
    S::CleanWait,
    S::Inspecting,
    S::InspectWait,
    S::Rescuing,
    S::RescueWait,
    S::ServiceWait,
];

/// States in which a node may be deleted without maintenance (`DELETE_ALLOWED_STATES`).
pub const DELETE_ALLOWED_STATES: &[ProvisionState] = &[S::Manageable, S::Enroll, S::AdoptFailed];

/// States in which a node may be patched while it has a target (`UPDATE_ALLOWED_STATES`).
pub const UPDATE_ALLOWED_STATES: &[ProvisionState] = &[
    S::DeployFailed,
    S::Inspecting,
    S::InspectFailed,
    S::InspectWait,
    S::CleanFailed,
    S::Error,
    S::Verifying,
    S::AdoptFailed,
    S::RescueFailed,
    S::UnrescueFailed,
    S::ServiceHold,
    S::ServiceFailed,
];

/// A `target` of `PUT /v1/nodes/{node}/states/provision`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    Active,
    Deploy,
    Rebuild,
    Deleted,
    Undeploy,
    Manage,
    Provide,
    Inspect,
    Abort,
    Clean,
    Adopt,
    Rescue,
    Unrescue,
    Unhold,
    Service,
}

impl Verb {
    pub const ALL: [Verb; 15] = [
        Verb::Active,
        Verb::Deploy,
        Verb::Rebuild,
        Verb::Deleted,
        Verb::Undeploy,
        Verb::Manage,
        Verb::Provide,
        Verb::Inspect,
        Verb::Abort,
        Verb::Clean,
        Verb::Adopt,
        Verb::Rescue,
        Verb::Unrescue,
        Verb::Unhold,
        Verb::Service,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Verb::Active => "active",
            Verb::Deploy => "deploy",
            Verb::Rebuild => "rebuild",
            Verb::Deleted => "deleted",
            Verb::Undeploy => "undeploy",
            Verb::Manage => "manage",
            Verb::Provide => "provide",
            Verb::Inspect => "inspect",
            Verb::Abort => "abort",
            Verb::Clean => "clean",
            Verb::Adopt => "adopt",
            Verb::Rescue => "rescue",
            Verb::Unrescue => "unrescue",
            Verb::Unhold => "unhold",
            Verb::Service => "service",
        }
    }

    pub fn parse(target: &str) -> Option<Verb> {
        Self::ALL.into_iter().find(|verb| verb.as_str() == target)
    }

    /// The FSM event the verb fires (Ironic's `VERBS`).
    pub fn event(self) -> Event {
        match self {
            Verb::Active | Verb::Deploy => E::Deploy,
            Verb::Rebuild => E::Rebuild,
            Verb::Deleted | Verb::Undeploy => E::Delete,
            Verb::Manage => E::Manage,
            Verb::Provide => E::Provide,
            Verb::Inspect => E::Inspect,
            Verb::Abort => E::Abort,
            Verb::Clean => E::Clean,
            Verb::Adopt => E::Adopt,
            Verb::Rescue => E::Rescue,
            Verb::Unrescue => E::Unrescue,
            Verb::Unhold => E::Unhold,
            Verb::Service => E::Service,
        }
    }

    /// The lowest API minor version accepting the verb (`MIN_VERB_VERSIONS`).
    pub fn min_api_minor(self) -> u32 {
        match self {
            Verb::Active | Verb::Rebuild | Verb::Deleted => 1,
            Verb::Manage | Verb::Provide => 4,
            Verb::Inspect => 6,
            Verb::Abort => 13,
            Verb::Clean => 15,
            Verb::Adopt => 17,
            Verb::Rescue | Verb::Unrescue => 38,
            Verb::Deploy | Verb::Undeploy => 73,
            Verb::Unhold => 85,
            Verb::Service => 87,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn state_strings_round_trip_and_are_unique() {
        let mut seen = HashSet::new();
        for state in ProvisionState::ALL {
            assert!(seen.insert(state.as_str()), "duplicate {state}");
            assert_eq!(state.as_str().parse::<ProvisionState>(), Ok(state));
            let json = serde_json::to_value(state).unwrap();
            assert_eq!(serde_json::from_value::<ProvisionState>(json).unwrap(), state);
        }
        assert_eq!(ProvisionState::DeployWait.as_str(), "wait call-back");
        assert!("deleted".parse::<ProvisionState>().is_err());
    }

    #[test]
    fn transitions_are_deterministic_and_cover_every_state() {
        let mut pairs = HashSet::new();
        for (from, event, _) in TRANSITIONS {
            assert!(pairs.insert((*from, *event)), "two transitions for {from} --{event}-->");
        }
        for state in ProvisionState::ALL {
            let leaves = TRANSITIONS.iter().any(|(from, _, _)| *from == state);
            let entered = TRANSITIONS.iter().any(|(_, _, to)| *to == state);
            assert!(leaves, "{state} is a dead end");
            assert!(entered || state == S::Enroll, "{state} cannot be reached");
        }
    }

    #[test]
    fn deploy_walk_follows_ironic() {
        let mut state = S::Enroll;
        for (event, expected) in [
            (E::Manage, S::Verifying),
            (E::Done, S::Manageable),
            (E::Provide, S::Cleaning),
            (E::Done, S::Available),
            (E::Deploy, S::Deploying),
            (E::Wait, S::DeployWait),
            (E::Resume, S::Deploying),
            (E::Done, S::Active),
            (E::Delete, S::Deleting),
            (E::Clean, S::Cleaning),
            (E::Done, S::Available),
        ] {
            state = next_state(state, event).unwrap_or_else(|| panic!("{state} refuses {event}"));
            assert_eq!(state, expected);
        }
    }

    #[test]
    fn refused_transitions() {
        assert_eq!(next_state(S::Enroll, E::Deploy), None);
        assert_eq!(next_state(S::Available, E::Provide), None);
        assert_eq!(next_state(S::Active, E::Deploy), None);
        assert_eq!(next_state(S::Manageable, E::Delete), None);
        assert_eq!(next_state(S::DeployWait, E::Abort), Some(S::DeployFailed));
        assert_eq!(next_state(S::ServiceFailed, E::Abort), Some(S::Active));
    }

    #[test]
    fn targets_follow_the_state_and_only_ironics_stable_states_have_none() {
        assert_eq!(S::Verifying.default_target(), Some(S::Manageable));
        assert_eq!(S::Deploying.default_target(), Some(S::Active));
        assert_eq!(S::DeployFailed.default_target(), Some(S::Active));
        assert_eq!(S::Deleting.default_target(), Some(S::Available));
        let stable: Vec<&str> =
            ProvisionState::ALL.into_iter().filter(|state| state.is_stable()).map(ProvisionState::as_str).collect();
        assert_eq!(stable, ["enroll", "manageable", "available", "active", "error", "rescue"]);
    }

    #[test]
    fn verbs_map_to_ironic_events_and_versions() {
        assert_eq!(Verb::parse("active").map(Verb::event), Some(E::Deploy));
        assert_eq!(Verb::parse("undeploy").map(Verb::event), Some(E::Delete));
        assert_eq!(Verb::parse("bogus"), None);
        assert_eq!(Verb::Deploy.min_api_minor(), 73);
        assert_eq!(Verb::Abort.min_api_minor(), 13);
        for verb in Verb::ALL {
            assert_eq!(Verb::parse(verb.as_str()), Some(verb));
        }
    }
}
