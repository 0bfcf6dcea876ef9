//! VMX control negotiation (SDM Appendix A.3-A.5).
