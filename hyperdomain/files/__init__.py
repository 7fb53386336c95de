"""Every file hyperdomain reads or writes, one module per kind, none of them ever running code
found in a file.

| module | reads / writes |
|---|---|
| ``atomic`` | the atomic write every writer uses: a temp file beside the target, renamed when complete |
| ``safetensors_files`` | our own files (domains, hypernetworks, run checkpoints): safetensors with a format name and version |
| ``run_checkpoints`` | resumable training checkpoints: trained tensors, optimizer and RNG state |
| ``restricted_unpickler`` | foreign pickles and ``torch.save`` files: tensors and plain data only |
| ``generator_files`` | StyleGAN2 generator checkpoints (the PyTorch port's, NVIDIA's network pickles) |
| ``paper_files`` | the HyperDomainNet authors' released domain and hypernetwork checkpoints |
| ``pretrained`` | the manifest of known weights, verified downloads, where files live |
| ``describe`` | what any of these files holds (``hyperdomain info``) |
| ``kinds`` | what kind of file an existing path is, from its first bytes (so no output replaces another kind) |
"""
