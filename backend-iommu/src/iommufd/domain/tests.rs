//! The domain against a model of iommufd's IOAS rules (no kernel needed).
