//! Portcullis risk plugin: ip-reputation (to be written).
