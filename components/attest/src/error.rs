use ppn_wire::NodeId;

/// Which node of the chain a finding is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The node whose attestation key signed the report.
    Reporter,
    /// The node whose attestation key signed the image's provisioning statement.
    Provisioner,
}

impl core::fmt::Display for Role {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            Role::Reporter => "reporting node",
            Role::Provisioner => "provisioning node",
        })
    }
}

/// Why a certificate, statement or report was not made or does not check.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("{what} of {len} bytes is over the limit of {max}")]
    TooLong { what: &'static str, len: usize, max: usize },
    #[error("{0} does not decode")]
    Decode(&'static str),
    #[error("{0}: a claim is missing, repeated or not of this profile")]
    Claims(&'static str),
    #[error("COSE algorithm is not EdDSA")]
    Algorithm,
    #[error("attestation key certificate: {0}")]
    Cert(&'static str),
    #[error("the attestation key is not the certificate's")]
    CertKeyMismatch,
    #[error("{role} {node}: its signing key is not one the fleet trusts (unknown node, or another key)")]
    UnknownNode { role: Role, node: NodeId },
    #[error("{role} {node} is revoked")]
    RevokedNode { role: Role, node: NodeId },
    #[error("the provisioning statement's signature does not check under the provisioning node's attestation key")]
    ProvisioningSignature,
    #[error("the report's signature does not check under the reporting node's attestation key")]
    ReportSignature,
    #[error("the report's image root hash is not the provisioned one")]
    ImageMismatch,
    #[error("the report's nonce is not the verifier's")]
    WrongNonce,
    #[error("nonce of {0} bytes (8 to 64)")]
    NonceLength(usize),
    #[error("name of {0} bytes (1 to 64)")]
    Name(usize),
    #[error("trust file, line {line}: {what}")]
    TrustFile { line: usize, what: &'static str },
}
