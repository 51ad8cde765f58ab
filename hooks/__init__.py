"""The git hook scripts `cmc hook install` puts in place (``prepare-commit-msg``).

This folder installs as the package ``cmc.hooks`` so the script ships inside cmc (a regular
package rather than a namespace one: setuptools' editable installs cannot find a namespace package
nested in a regular one). The logic lives in `cmc.hook`; the script stays a few lines of sh.
"""
