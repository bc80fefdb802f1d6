"""Small widgets that render immutable snapshots."""
