"""Stand-in for ansible-test's downloaded get-pip bootstrap script.

ansible-test fetches get-pip from a host this network cannot reach, then runs it inside each
fresh sanity virtualenv with ``PIP_CONFIG_FILE=/dev/null`` and a filtered environment, so pip
would not trust the system CA bundle either. This script is copied to
``~/.ansible/test/cache/get_pip_<version>.py`` by tests/sanity/sanity.sh. It installs the pip
that ansible-test asks for from the Python's own ensurepip, trusting the system bundle, and makes
that bundle pip's default so the sanity requirements install afterwards.
"""

import glob
import os
import shutil
import subprocess
import sys

CA_BUNDLE = '/etc/ssl/certs/ca-certificates.crt'

# get-pip options that are not pip install options
packages = [arg for arg in sys.argv[1:] if arg not in ('--no-setuptools', '--no-wheel', '--disable-pip-version-check')]

subprocess.check_call([sys.executable, '-m', 'ensurepip', '--default-pip'])
subprocess.check_call([sys.executable, '-m', 'pip', 'install', '--disable-pip-version-check',
                       '--cert', CA_BUNDLE] + packages)
for vendored in glob.glob(os.path.join(sys.prefix, 'lib', 'python*', 'site-packages', 'pip', '_vendor',
                                       'certifi', 'cacert.pem')):
    shutil.copyfile(CA_BUNDLE, vendored)
