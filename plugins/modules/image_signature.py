#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: safedeploy.compose contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r'''
module: image_signature
short_description: Verify the cosign signatures of image digests against a per-repository policy of public keys
version_added: 0.2.0
description:
  - For every image digest given, finds the policy entry of its repository and checks, in the image's registry, that
    at least one signature by one of that entry's public keys signs exactly that digest. Nothing is pulled and
    nothing changes; run it after M(safedeploy.compose.compose_pin) and before any pull.
  - Reads both storage formats of cosign key-based signatures, written from their published descriptions.
    The legacy format is the tag C(sha256-<hex>.sig) in the image's repository, whose layers are simple-signing
    payloads signed in the annotation C(dev.cosignproject.cosign/signature); the payload's
    C(critical.image.docker-manifest-digest) must be the image digest.
    The Sigstore bundle (C(application/vnd.dev.sigstore.bundle.v0.3+json), cosign 3's default) is an OCI 1.1 referrer
    of the image, read with the registry's referrers API or, on registries without it, from the fallback tag
    C(sha256-<hex>). It holds a DSSE envelope of an in-toto statement; the signature is checked over the DSSE
    pre-authentication encoding and the statement's subject must name the image digest.
  - The transparency log (Rekor) and keyless certificates (Fulcio) are not verified; this is the equivalent of
    C(cosign verify --key cosign.pub --insecure-ignore-tlog=true).
  - With a policy entry in mode V(required), the module fails when any of its images has no valid signature, listing
    every failing image and why. In mode V(report), a failing image is a warning. Images matched by no entry are
    reported as not checked.
author:
  - safedeploy.compose contributors (@safedeploy)
options:
  images:
    description:
      - The images to verify, each a reference with a digest, for example
        C(registry.example.com/shop/web:9f2c1ab@sha256:4f8c...) (what RV(safedeploy.compose.compose_pin#module:services)
        returns as C(pinned)). The digest is what is verified; a tag is only shown.
    type: list
    elements: str
    required: true
  policy:
    description:
      - Which keys must have signed which repositories. The first entry whose O(policy[].repository) matches an image's
        repository applies.
    type: list
    elements: dict
    required: true
    suboptions:
      repository:
        description:
          - A repository with its registry and without tag, for example C(registry.example.com/shop/web), or a
            shell-style pattern where C(*) also crosses C(/), for example C(registry.example.com/shop/*).
        type: str
        required: true
      keys:
        description:
          - The public keys of which at least one must have signed the image digest.
        type: list
        elements: dict
        required: true
        suboptions:
          name:
            description:
              - A name for the key, shown in the verdicts and recorded in the release ledger.
              - Defaults to the pattern and the key's position.
            type: str
          pem:
            description:
              - The public key in PEM (C(-----BEGIN PUBLIC KEY-----)), as C(cosign generate-key-pair) writes it to
                C(cosign.pub). ECDSA P-256 (cosign's default) and P-384, Ed25519, RSA of 2048 bits or more
                (PKCS#1 v1.5 or PSS signatures over SHA-256).
            type: str
            required: true
      mode:
        description:
          - V(required) fails the module when an image has no valid signature; V(report) only warns.
        type: str
        choices: [required, report]
        default: required
  formats:
    description:
      - The signature formats looked for. An image passes when a signature of any of them verifies.
    type: list
    elements: str
    choices: [legacy, bundle]
    default: [legacy, bundle]
  timeout:
    description:
      - Seconds allowed for verifying one image, every registry request and retry included; a registry that ran out
        of time is not asked again in that run.
    type: int
    default: 60
extends_documentation_fragment:
  - safedeploy.compose._registry
attributes:
  check_mode:
    description: Runs the same in check mode; it only reads.
    support: full
  diff_mode:
    description: Nothing changes, so there is no diff.
    support: none
  idempotent:
    description: It only reads.
    support: full
notes:
  - Rollback targets are not verified again by the rollout and rollback roles; their digests were verified when they
    were rolled out and are in the release ledger.
requirements:
  - cryptography (Python library) on the managed host
seealso:
  - module: safedeploy.compose.compose_pin
'''

EXAMPLES = r'''
- name: Pin the release
  safedeploy.compose.compose_pin:
    project_src: /srv/shop
    project_name: shop
    tag: 9f2c1ab
  register: shop_pin

- name: Only images signed by the CI key reach the host
  safedeploy.compose.image_signature:
    images: "{{ shop_pin.services.values() | map(attribute='pinned') | select | list }}"
    policy:
      - repository: registry.example.com/shop/*
        keys:
          - name: ci-2025
            pem: "{{ lookup('ansible.builtin.file', 'keys/cosign.pub') }}"
      - repository: docker.io/library/*
        mode: report
        keys:
          - name: vendor
            pem: "{{ lookup('ansible.builtin.file', 'keys/vendor.pub') }}"
  register: shop_signatures
'''

RETURN = r'''
verdicts:
  description:
    - One verdict per image, in the order given.
    - C(verified) is true when a signature by an allowed key signs the digest, false when none does, null when no
      policy entry matches the image. C(key) and C(keyid) (sha256 of the key's DER SubjectPublicKeyInfo) name the key
      that verified it, C(format) is V(legacy) or V(bundle), C(problems) lists why each signature found did not
      count (or that none was found).
  returned: always
  type: list
  elements: dict
  sample:
    - image: registry.example.com/shop/web:9f2c1ab@sha256:4f8c0b1e6a43c0b6bd9ec4b1a7d2b81d0cc0f93a4b9a4c4f4ef2f2d3b4c5d6e7
      repository: registry.example.com/shop/web
      digest: sha256:4f8c0b1e6a43c0b6bd9ec4b1a7d2b81d0cc0f93a4b9a4c4f4ef2f2d3b4c5d6e7
      policy: registry.example.com/shop/*
      mode: required
      verified: true
      key: ci-2025
      keyid: 3b1d0c4e2a9f8e7d6c5b4a39281706f5e4d3c2b1a09f8e7d6c5b4a3928170605
      format: bundle
      source: bundle sha256:1c2d3e4f5a6b (referrers API)
      signatures_found: 1
      problems: []
failures:
  description:
    - The images of V(required) entries that have no valid signature, each as C(image) and the C(problems) of its
      verdict. Empty on success.
  returned: always
  type: list
  elements: dict
  sample:
    - image: registry.example.com/shop/worker:9f2c1ab@sha256:0d6f2e3c1b8a4f5e9d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a2f1e0d9c8b7a6f5e
      problems: ["no signature: found neither a legacy signature tag sha256-0d6f....sig nor a Sigstore bundle referrer"]
'''


from ansible.module_utils.basic import AnsibleModule, missing_required_lib

from ansible_collections.safedeploy.compose.plugins.module_utils._image_ref import ImageRef
from ansible_collections.safedeploy.compose.plugins.module_utils._registry import (
    REGISTRY_ARGUMENT_SPEC, RegistryClient,
)
from ansible_collections.safedeploy.compose.plugins.module_utils._signatures import (
    CRYPTOGRAPHY_IMPORT_ERROR, FORMATS, HAS_CRYPTOGRAPHY, ImageVerifier, SignatureFormatError, load_policy,
    match_policy,
)


class ImageSignature(object):
    """Verifies each image digest against the policy entry of its repository."""

    def __init__(self, module):
        self.module = module
        self.params = module.params
        self.result = dict(changed=False, verdicts=[], failures=[])

    def fail(self, msg, **extra):
        self.result.update(extra)
        self.module.fail_json(msg=msg, **self.result)

    def run(self):
        if not HAS_CRYPTOGRAPHY:
            self.fail(missing_required_lib('cryptography'), exception=CRYPTOGRAPHY_IMPORT_ERROR)
        try:
            policy = load_policy(self.params['policy'])
        except SignatureFormatError as exc:
            self.fail('image_signature: the signature policy cannot be used: %s' % exc)
        refs = []
        for image in self.params['images']:
            try:
                ref = ImageRef.parse(image)
            except ValueError as exc:
                self.fail('image_signature: %r is not an image reference: %s' % (image, exc))
            if not ref.digest:
                self.fail('image_signature: image %s has no digest: signatures are verified for a digest, pin the '
                          'image first (compose_pin returns each service\'s pinned reference)' % image)
            refs.append((image, ref))
        client = RegistryClient(credentials=self.params['registry_auth'], docker_config=self.params['docker_config'],
                                insecure_registries=self.params['insecure_registries'], timeout=self.params['timeout'],
                                validate_certs=self.params['validate_certs'])
        verifier = ImageVerifier(client, tuple(name for name in FORMATS if name in self.params['formats']))
        for image, ref in refs:
            self.result['verdicts'].append(self.verdict(verifier, policy, image, ref))
        reported = [verdict for verdict in self.result['verdicts']
                    if verdict['verified'] is False and verdict['mode'] == 'report']
        for verdict in reported:
            self.module.warn('image %s has no valid signature (policy %s, mode report): %s'
                             % (verdict['image'], verdict['policy'], '; '.join(verdict['problems'])))
        failures = [dict(image=verdict['image'], problems=verdict['problems']) for verdict in self.result['verdicts']
                    if verdict['verified'] is False and verdict['mode'] == 'required']
        self.result['failures'] = failures
        if failures:
            details = ' | '.join('%s: %s' % (entry['image'], '; '.join(entry['problems'])) for entry in failures)
            self.fail('image_signature: %d of %d images have no valid signature by an allowed key, nothing may be pulled: '
                      '%s. Sign each digest with an allowed key (docs/signatures.md), or correct the policy.'
                      % (len(failures), len(refs), details))
        return self.result

    def verdict(self, verifier, policy, image, ref):
        repository = '%s/%s' % (ref.registry, ref.repository)
        verdict = dict(image=image, repository=repository, digest=ref.digest, policy=None, mode=None, verified=None,
                       key=None, keyid=None, format=None, source=None, signatures_found=0, problems=[])
        entry = match_policy(policy, repository)
        if entry is None:
            verdict['problems'] = ['no policy entry matches repository %s: not checked' % repository]
            return verdict
        verdict['policy'], verdict['mode'] = entry[0], entry[1]
        verdict.update(verifier.verify(ref, ref.digest, entry[2]))
        return verdict


def new_module():
    """The AnsibleModule of image_signature, its arguments read and typed."""
    argument_spec = dict(
        images=dict(type='list', elements='str', required=True),
        policy=dict(type='list', elements='dict', required=True, options=dict(
            repository=dict(type='str', required=True),
            keys=dict(type='list', elements='dict', required=True, no_log=False, options=dict(
                name=dict(type='str'),
                pem=dict(type='str', required=True),
            )),
            mode=dict(type='str', choices=['required', 'report'], default='required'),
        )),
        formats=dict(type='list', elements='str', choices=list(FORMATS), default=list(FORMATS)),
        timeout=dict(type='int', default=60),
    )
    argument_spec.update(REGISTRY_ARGUMENT_SPEC)
    return AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)


def main():
    module = new_module()
    module.exit_json(**ImageSignature(module).run())


if __name__ == '__main__':
    main()
