"""Every file hyperdomain reads or writes, one module per kind, none of them ever running code
found in a file. These modules import no model: they read and write tensors, metadata and bytes
(the model's own files are read by ``hyperdomain.model``, through them).

| module | reads / writes |
|---|---|
| ``atomic`` | the atomic write every writer uses: a temp file beside the target, renamed when complete |
| ``safetensors_files`` | our own files (domains, hypernetworks, run checkpoints): safetensors with a format name and version |
| ``run_checkpoints`` | resumable training checkpoints: trained tensors, optimizer and RNG state |
| ``restricted_unpickler`` | foreign pickles and ``torch.save`` files: tensors and plain data only |
| ``generator_files`` | StyleGAN2 generator checkpoints (the PyTorch port's, NVIDIA's network pickles) |
| ``pretrained`` | the manifest of known weights, verified downloads, where files live |
| ``kinds`` | what kind of file an existing path is, from its first bytes (so no output replaces another kind) |
"""
