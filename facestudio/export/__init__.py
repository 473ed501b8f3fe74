"""Export stage: FaceStudio data written in formats other tools read (nerfstudio, meshes)."""
