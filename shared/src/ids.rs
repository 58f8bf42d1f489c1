//! Identifiers and names of the configured objects.
//!
//! Identifiers are small newtypes over their index in the configuration, so
//! the fast path can use them as table indices; they are only created by
//! the configuration builder, which checks that they refer to something.

use core::fmt;

macro_rules! id {
    ($(#[$meta:meta])* $name:ident, $label:literal) => {
        $(#[$meta])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
        pub struct $name(u16);

        impl $name {
            /// The index this identifier stands for.
            #[must_use]
            pub const fn index(self) -> usize {
                self.0 as usize
            }

            /// The identifier of an index. Only the configuration builder
            /// and tests hand these out; an identifier that does not name
            /// a configured object is refused wherever it is used.
            #[must_use]
            pub const fn from_index(index: u16) -> Self {
                Self(index)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!($label, "#{}"), self.0)
            }
        }
    };
}

id!(
    /// A switch port: an uplink or the representor of a VF.
    PortId,
    "port"
);
id!(
    /// A service (firewall, nat, ...).
    ServiceId,
    "service"
);
id!(
    /// One running copy of a service.
    InstanceId,
    "instance"
);
id!(
    /// An ordered list of services.
    ChainId,
    "chain"
);
id!(
    /// Another DPU, reached over the underlay.
    PeerId,
    "peer"
);

/// The generation of a configuration: every applied configuration has a
/// higher one than the one before.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default)]
pub struct Generation(pub u64);

impl fmt::Display for Generation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The longest name, in bytes.
pub const NAME_LEN: usize = 32;

/// A name an operator gave an object: 1 to 32 bytes of ASCII letters,
/// digits, `-`, `_` and `.`, starting with a letter or digit.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Name(heapless::String<NAME_LEN>);

/// Why a name was refused.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum NameError {
    /// The name is empty.
    Empty,
    /// The name is longer than [`NAME_LEN`] bytes.
    TooLong,
    /// The name has a character other than ASCII letters, digits, `-`,
    /// `_`, `.`, or does not start with a letter or digit.
    BadCharacter,
}

impl fmt::Display for NameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Empty => f.write_str("name is empty"),
            Self::TooLong => write!(f, "name is longer than {NAME_LEN} bytes"),
            Self::BadCharacter => f.write_str(
                "name must start with a letter or digit and hold only letters, digits, '-', '_', '.'",
            ),
        }
    }
}

impl core::error::Error for NameError {}

impl Name {
    /// A checked name.
    ///
    /// # Errors
    /// [`NameError`] saying what is wrong.
    pub fn new(name: &str) -> Result<Self, NameError> {
        let first = name.bytes().next().ok_or(NameError::Empty)?;
        if name.len() > NAME_LEN {
            return Err(NameError::TooLong);
        }
        let allowed = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.');
        if !first.is_ascii_alphanumeric() || !name.bytes().all(allowed) {
            return Err(NameError::BadCharacter);
        }
        let mut s = heapless::String::new();
        s.push_str(name).map_err(|_| NameError::TooLong)?;
        Ok(Self(s))
    }

    /// The name.
    #[must_use]
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        assert_eq!(Name::new("fw-1.a_b").unwrap().as_str(), "fw-1.a_b");
        assert_eq!(Name::new(""), Err(NameError::Empty));
        assert_eq!(Name::new("-x"), Err(NameError::BadCharacter));
        assert_eq!(Name::new("a b"), Err(NameError::BadCharacter));
        assert_eq!(Name::new("é"), Err(NameError::BadCharacter));
        assert_eq!(Name::new(&"a".repeat(33)), Err(NameError::TooLong));
        assert!(Name::new(&"a".repeat(32)).is_ok());
    }

    #[test]
    fn ids_print_their_kind() {
        extern crate std;
        assert_eq!(std::format!("{}", InstanceId::from_index(3)), "instance#3");
    }
}
