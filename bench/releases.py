"""Release images for the benchmark, pushed straight to the local registry over the Registry HTTP API v2.

A release of a service is the test app (``safedeploy-test/app:v2``, or ``:v3`` which crash-loops) plus one
small layer of its own and ``APP_VERSION`` set to the release id, so that

- every release has new content: ``pull`` really fetches a layer, as it does for a real release, while the
  base layers are already on the host, as they usually are;
- the app's ``/cgi-bin/health`` answers ``"version": "<release>"``, so a watcher can tell the moment the new
  (or the old) release is the one serving.

Nothing is built: the base layers are mounted from the test app's repository, the new layer and the image
config are uploaded, and the manifest is put under the release tag. That costs milliseconds, so the bench
can make fresh releases for every repetition of every stack.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import tarfile
import time

import requests

MANIFEST_V2 = 'application/vnd.docker.distribution.manifest.v2+json'
LAYER_GZIP = 'application/vnd.docker.image.rootfs.diff.tar.gzip'
BASE_REPO = 'safedeploy-test/app'


def _sha256(data):
    return 'sha256:' + hashlib.sha256(data).hexdigest()


def _stamp_layer(release, service):
    """A gzipped tar holding /srv/release (unique bytes): returns (compressed blob, diff id)."""
    body = ('%s %s %s\n' % (release, service, os.urandom(16).hex())).encode()
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode='w', format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo('srv/release')
        info.size = len(body)
        info.mtime = int(time.time())
        info.mode = 0o644
        tar.addfile(info, io.BytesIO(body))
    uncompressed = raw.getvalue()
    return gzip.compress(uncompressed, mtime=0), _sha256(uncompressed)


class ReleasePusher(object):
    """Pushes ``<registry>/<repo>:<release>`` images derived from the test app's tags."""

    def __init__(self, registry='127.0.0.1:5000'):
        self.registry = registry
        self.session = requests.Session()
        self._bases = {}
        self.pushed = []  # (repo, digest) of every manifest pushed, for cleanup

    def _url(self, path):
        return 'http://%s/v2/%s' % (self.registry, path)

    def _base(self, tag):
        if tag not in self._bases:
            resp = self.session.get(self._url('%s/manifests/%s' % (BASE_REPO, tag)), headers={'Accept': MANIFEST_V2}, timeout=10)
            resp.raise_for_status()
            manifest = resp.json()
            config = self.session.get(self._url('%s/blobs/%s' % (BASE_REPO, manifest['config']['digest'])), timeout=10)
            config.raise_for_status()
            self._bases[tag] = (manifest, config.json())
        return self._bases[tag]

    def _mount(self, repo, digest):
        resp = self.session.post(self._url('%s/blobs/uploads/' % repo), params={'mount': digest, 'from': BASE_REPO}, timeout=10)
        if resp.status_code == 201:
            return
        if resp.status_code != 202:
            resp.raise_for_status()
        raise RuntimeError('registry %s would not mount %s into %s (HTTP %s)' % (self.registry, digest, repo, resp.status_code))

    def _upload(self, repo, data):
        digest = _sha256(data)
        if self.session.head(self._url('%s/blobs/%s' % (repo, digest)), timeout=10).status_code == 200:
            return digest
        start = self.session.post(self._url('%s/blobs/uploads/' % repo), timeout=10)
        start.raise_for_status()
        location = start.headers['Location']
        if location.startswith('/'):
            location = 'http://%s%s' % (self.registry, location)
        put = self.session.put(location, params={'digest': digest}, data=data,
                               headers={'Content-Type': 'application/octet-stream'}, timeout=30)
        put.raise_for_status()
        return digest

    def push(self, repo, release, service='app', base_tag='v2', env=None):
        """Push repo:release (repo without registry) and return its manifest digest; env adds to the image's Env."""
        manifest, config = self._base(base_tag)
        manifest = json.loads(json.dumps(manifest))
        config = json.loads(json.dumps(config))
        for layer in manifest['layers']:
            self._mount(repo, layer['digest'])
        blob, diff_id = _stamp_layer(release, service)
        layer_digest = self._upload(repo, blob)
        extra = dict(env or {}, APP_VERSION=release)
        kept = [item for item in config['config'].get('Env') or [] if item.split('=', 1)[0] not in extra]
        config['config']['Env'] = kept + ['%s=%s' % (key, value) for key, value in sorted(extra.items())]
        config['rootfs']['diff_ids'].append(diff_id)
        config.setdefault('history', []).append({'created': time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime()),
                                                 'created_by': 'safedeploy bench release %s' % release})
        config['created'] = time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())
        config_blob = json.dumps(config, sort_keys=True).encode()
        manifest['config'] = {'mediaType': manifest['config']['mediaType'], 'size': len(config_blob),
                              'digest': self._upload(repo, config_blob)}
        manifest['layers'].append({'mediaType': LAYER_GZIP, 'size': len(blob), 'digest': layer_digest})
        body = json.dumps(manifest, indent=3).encode()
        resp = self.session.put(self._url('%s/manifests/%s' % (repo, release)), data=body,
                                headers={'Content-Type': MANIFEST_V2}, timeout=10)
        resp.raise_for_status()
        digest = resp.headers.get('Docker-Content-Digest') or _sha256(body)
        self.pushed.append((repo, digest))
        return digest

    def delete_all(self):
        """Delete every manifest this pusher put (the registry has deletes enabled); errors are ignored."""
        for repo, digest in self.pushed:
            try:
                self.session.delete(self._url('%s/manifests/%s' % (repo, digest)), timeout=10)
            except requests.RequestException:
                pass
        self.pushed = []
