//! The vendor's license server (work in progress).
