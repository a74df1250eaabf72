"""Pure core: decoding, model, lifting, geometry, pipeline, config. Nothing here imports rclpy."""
