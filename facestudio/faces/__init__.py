"""Face sources: ARKit blendshape naming, the ICT morphable model and a built-in procedural head."""
