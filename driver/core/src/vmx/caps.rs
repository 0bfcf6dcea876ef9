//! Capability MSRs (SDM Appendix A).
