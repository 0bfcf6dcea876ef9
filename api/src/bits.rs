//! Bit-field descriptors.
//!
//! C bit-fields (segment access rights, interruptibility state) are modelled as a `u32` plus a
//! [`BitField`] descriptor per field. The same descriptor drives the typed accessors and the
//! conformance table (`bit_offset`, `bit_width`), so the two cannot disagree.

/// The position of a bit-field inside a `u32`, bit 0 being the least significant bit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BitField {
    /// The lowest bit of the field.
    pub shift: u32,
    /// The number of bits (1..=32).
    pub width: u32,
}

impl BitField {
    /// A field of `width` bits starting at bit `shift`.
    pub const fn new(shift: u32, width: u32) -> Self {
        assert!(width >= 1 && shift + width <= 32, "bit-field outside a u32");
        Self { shift, width }
    }

    /// The field's bits, in place.
    pub const fn mask(self) -> u32 {
        (u32::MAX >> (32 - self.width)) << self.shift
    }

    /// The field's value, shifted down.
    pub const fn get(self, raw: u32) -> u32 {
        (raw & self.mask()) >> self.shift
    }

    /// `raw` with the field replaced by `value`. Bits of `value` above the field's width are
    /// dropped, as a C bit-field assignment does.
    pub const fn set(self, raw: u32, value: u32) -> u32 {
        (raw & !self.mask()) | ((value << self.shift) & self.mask())
    }
}

#[cfg(test)]
mod tests {
    use super::BitField;

    #[test]
    fn get_set_mask() {
        let f = BitField::new(5, 2);
        assert_eq!(f.mask(), 0b110_0000);
        assert_eq!(f.set(0xffff_ffff, 0), 0xffff_ff9f);
        assert_eq!(f.set(0, 0b111), 0b110_0000, "value truncated to the width");
        assert_eq!(f.get(0b100_0000), 2);
        let full = BitField::new(0, 32);
        assert_eq!(full.mask(), u32::MAX);
        assert_eq!(full.set(0, 0x1234_5678), 0x1234_5678);
    }
}
