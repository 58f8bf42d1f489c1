//! Enums for code-valued header fields (EtherType, IP protocol, ...).
//!
//! An unknown code is data, not an error, so every such enum has an
//! `Unknown(n)` arm, and equality, ordering and hashing are those of the
//! number: `Unknown(6)` and `Tcp` are the same protocol.
//!
//! Decoding a one-byte code is a table lookup rather than a `match`: the
//! compiler turns a dense `match` into a jump table, and on mixed traffic
//! that indirect branch mispredicts on most packets.

/// Declares a code enum: the named arms with their numbers, an
/// `Unknown($repr)` arm, `number`/`from_number`, `From` both ways, and
/// `PartialEq`/`Eq`/`Ord`/`Hash` by number. One-byte codes decode through
/// a 256-entry table.
#[macro_export]
macro_rules! code_enum {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident: u8 {
            $( $(#[$vmeta:meta])* $variant:ident = $value:literal, )*
        }
    ) => {
        $crate::code_enum!(@common [$(#[$meta])*] $vis $name u8 {
            $( $(#[$vmeta])* $variant = $value, )*
        });

        impl $name {
            /// The enum value of a code; never fails.
            #[must_use]
            #[inline]
            pub const fn from_number(n: u8) -> Self {
                const TABLE: [$name; 256] = {
                    let mut table = [$name::Unknown(0); 256];
                    let mut i = 0;
                    while i < 256 {
                        // `i` < 256 fits a u8 and indexes the table.
                        #[allow(clippy::cast_possible_truncation, clippy::indexing_slicing)]
                        {
                            table[i] = $name::decode(i as u8);
                        }
                        i += 1;
                    }
                    table
                };
                // A u8 always indexes a 256-entry table.
                #[allow(clippy::indexing_slicing)]
                TABLE[n as usize]
            }
        }
    };
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident: $repr:ty {
            $( $(#[$vmeta:meta])* $variant:ident = $value:literal, )*
        }
    ) => {
        $crate::code_enum!(@common [$(#[$meta])*] $vis $name $repr {
            $( $(#[$vmeta])* $variant = $value, )*
        });

        impl $name {
            /// The enum value of a code; never fails.
            #[must_use]
            #[inline]
            pub const fn from_number(n: $repr) -> Self {
                Self::decode(n)
            }
        }
    };
    (
        @common [$(#[$meta:meta])*] $vis:vis $name:ident $repr:ty {
            $( $(#[$vmeta:meta])* $variant:ident = $value:literal, )*
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug)]
        $vis enum $name {
            $( $(#[$vmeta])* $variant, )*
            /// Any other code.
            Unknown($repr),
        }

        impl $name {
            /// The code on the wire.
            #[must_use]
            #[inline]
            pub const fn number(self) -> $repr {
                match self {
                    $( Self::$variant => $value, )*
                    Self::Unknown(n) => n,
                }
            }

            const fn decode(n: $repr) -> Self {
                match n {
                    $( $value => Self::$variant, )*
                    n => Self::Unknown(n),
                }
            }
        }

        impl From<$repr> for $name {
            #[inline]
            fn from(n: $repr) -> Self {
                Self::from_number(n)
            }
        }

        impl From<$name> for $repr {
            fn from(v: $name) -> Self {
                v.number()
            }
        }

        impl PartialEq for $name {
            #[inline]
            fn eq(&self, other: &Self) -> bool {
                self.number() == other.number()
            }
        }

        impl Eq for $name {}

        impl PartialOrd for $name {
            fn partial_cmp(&self, other: &Self) -> Option<core::cmp::Ordering> {
                Some(self.cmp(other))
            }
        }

        impl Ord for $name {
            fn cmp(&self, other: &Self) -> core::cmp::Ordering {
                self.number().cmp(&other.number())
            }
        }

        impl core::hash::Hash for $name {
            fn hash<H: core::hash::Hasher>(&self, state: &mut H) {
                self.number().hash(state);
            }
        }
    };
}
