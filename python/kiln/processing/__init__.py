"""Pre- and post-processing: tokenizers and the decoders that turn outputs into answers.

Submodules are imported on use (`from kiln.processing.text import TextTokenizer`), so this
package costs nothing to import.
"""
