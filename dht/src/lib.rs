//! dht
