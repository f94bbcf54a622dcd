//! Helpers shared by the integration tests live in the test binary itself.
