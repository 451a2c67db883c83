//! The embedded transactional store (redb): label and uid reservations, originals, guests.
