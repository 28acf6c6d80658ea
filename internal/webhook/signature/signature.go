// Package signature verifies (and, for the sandbox and tests, makes)
// HighLevel's webhook signatures. It depends on nothing else of ours, so the
// sandbox can sign with it.
//
// Verification follows HighLevel's documentation and its official SDK: the
// signature is over the raw body; X-GHL-Signature (Ed25519, base64) is
// checked first, and X-WH-Signature (RSA PKCS#1 v1.5 with SHA-256, base64,
// the legacy scheme) only when X-GHL-Signature is absent, so a bad Ed25519
// signature can never be rescued by a good legacy one.
package signature

import (
	"crypto"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"net/http"
	"strings"
)

// Header names.
const (
	HeaderSignature       = "X-GHL-Signature" // Ed25519
	HeaderLegacySignature = "X-WH-Signature"  // RSA SHA-256 (legacy)
)

// DefaultEd25519Key is the Ed25519 key quoted from HighLevel's rendered
// docs (SPKI DER, base64). It is not confirmed against an official page
// here, so it is only a default: set HIGHLEVEL_WEBHOOK_PUBLIC_KEY.
const DefaultEd25519Key = "MCowBQYDK2VwAyEAi2HR1srL4o18O8BRa7gVJY7G7bupbN3H9AwJrHCDiOg="

// DefaultRSAKey is the legacy scheme's key from HighLevel's webhook
// authentication guide (docs/webhook-authentication.md).
const DefaultRSAKey = `-----BEGIN PUBLIC KEY-----
MIICIjANBgkqhkiG9w0BAQEFAAOCAg8AMIICCgKCAgEAokvo/r9tVgcfZ5DysOSC
Frm602qYV0MaAiNnX9O8KxMbiyRKWeL9JpCpVpt4XHIcBOK4u3cLSqJGOLaPuXw6
dO0t6Q/ZVdAV5Phz+ZtzPL16iCGeK9po6D6JHBpbi989mmzMryUnQJezlYJ3DVfB
csedpinheNnyYeFXolrJvcsjDtfAeRx5ByHQmTnSdFUzuAnC9/GepgLT9SM4nCpv
uxmZMxrJt5Rw+VUaQ9B8JSvbMPpez4peKaJPZHBbU3OdeCVx5klVXXZQGNHOs8gF
3kvoV5rTnXV0IknLBXlcKKAQLZcY/Q9rG6Ifi9c+5vqlvHPCUJFT5XUGG5RKgOKU
J062fRtN+rLYZUV+BjafxQauvC8wSWeYja63VSUruvmNj8xkx2zE/Juc+yjLjTXp
IocmaiFeAO6fUtNjDeFVkhf5LNb59vECyrHD2SQIrhgXpO4Q3dVNA5rw576PwTzN
h/AMfHKIjE4xQA1SZuYJmNnmVZLIZBlQAF9Ntd03rfadZ+yDiOXCCs9FkHibELhC
HULgCsnuDJHcrGNd5/Ddm5hxGQ0ASitgHeMZ0kcIOwKDOzOU53lDza6/Y09T7sYJ
PQe7z0cvj7aE4B+Ax1ZoZGPzpJlZtGXCsu9aTEGEnKzmsFqwcSsnw3JB31IGKAyk
T1hhTiaCeIY/OwwwNUY2yvcCAwEAAQ==
-----END PUBLIC KEY-----`

// Refusal reasons (the metric's result label for refused signatures).
const (
	ReasonMissingSignature = "missing_signature"
	ReasonBadSignature     = "bad_signature"
	ReasonLegacyRefused    = "legacy_refused"
)

// VerifyError says why a request's signature was refused.
type VerifyError struct {
	Reason string
	msg    string
}

func (e *VerifyError) Error() string { return e.msg }

// Verifier checks webhook signatures.
type Verifier struct {
	ed  ed25519.PublicKey
	rsa *rsa.PublicKey // nil: the legacy scheme is refused
}

// NewVerifier builds a verifier from an Ed25519 key and, unless legacy is
// false, an RSA key. Keys are PEM ("BEGIN PUBLIC KEY") or base64 SPKI DER;
// empty means the default.
func NewVerifier(edKey, rsaKey string, legacy bool) (*Verifier, error) {
	v := &Verifier{}
	k, err := ParsePublicKey(strings.TrimSpace(orDefault(edKey, DefaultEd25519Key)))
	if err != nil {
		return nil, fmt.Errorf("Ed25519 webhook key: %w", err)
	}
	ed, ok := k.(ed25519.PublicKey)
	if !ok {
		return nil, fmt.Errorf("Ed25519 webhook key: it is a %T, want an Ed25519 key", k)
	}
	v.ed = ed
	if legacy {
		k, err := ParsePublicKey(strings.TrimSpace(orDefault(rsaKey, DefaultRSAKey)))
		if err != nil {
			return nil, fmt.Errorf("RSA webhook key: %w", err)
		}
		rk, ok := k.(*rsa.PublicKey)
		if !ok {
			return nil, fmt.Errorf("RSA webhook key: it is a %T, want an RSA key", k)
		}
		v.rsa = rk
	}
	return v, nil
}

func orDefault(s, def string) string {
	if strings.TrimSpace(s) == "" {
		return def
	}
	return s
}

// ParsePublicKey reads a PEM "PUBLIC KEY" block or base64 SPKI DER.
func ParsePublicKey(s string) (crypto.PublicKey, error) {
	der := []byte(nil)
	if strings.Contains(s, "-----BEGIN") {
		b, _ := pem.Decode([]byte(s))
		if b == nil {
			return nil, errors.New("PEM block does not decode")
		}
		if b.Type != "PUBLIC KEY" {
			return nil, fmt.Errorf("PEM block is %q, want PUBLIC KEY", b.Type)
		}
		der = b.Bytes
	} else {
		d, err := base64.StdEncoding.DecodeString(strings.Join(strings.Fields(s), ""))
		if err != nil {
			return nil, fmt.Errorf("neither PEM nor base64: %w", err)
		}
		der = d
	}
	k, err := x509.ParsePKIXPublicKey(der)
	if err != nil {
		return nil, fmt.Errorf("not an SPKI public key: %w", err)
	}
	return k, nil
}

// Legacy reports whether the RSA scheme is accepted.
func (v *Verifier) Legacy() bool { return v.rsa != nil }

// Verify checks body against the request's signature headers and returns
// the scheme used ("ed25519" or "rsa").
func (v *Verifier) Verify(body []byte, h http.Header) (string, error) {
	if sig := h.Get(HeaderSignature); sig != "" {
		b, err := base64.StdEncoding.DecodeString(strings.TrimSpace(sig))
		if err != nil || !ed25519.Verify(v.ed, body, b) {
			return "", &VerifyError{ReasonBadSignature, HeaderSignature + " does not verify against the body with the configured Ed25519 key (HIGHLEVEL_WEBHOOK_PUBLIC_KEY)"}
		}
		return "ed25519", nil
	}
	sig := h.Get(HeaderLegacySignature)
	if sig == "" {
		return "", &VerifyError{ReasonMissingSignature, "no " + HeaderSignature + " or " + HeaderLegacySignature + " header"}
	}
	if v.rsa == nil {
		return "", &VerifyError{ReasonLegacyRefused, HeaderLegacySignature + " (legacy RSA) is refused: HIGHLEVEL_WEBHOOK_LEGACY=off"}
	}
	b, err := base64.StdEncoding.DecodeString(strings.TrimSpace(sig))
	if err != nil {
		return "", &VerifyError{ReasonBadSignature, HeaderLegacySignature + " is not base64"}
	}
	sum := sha256.Sum256(body)
	if rsa.VerifyPKCS1v15(v.rsa, crypto.SHA256, sum[:], b) != nil {
		return "", &VerifyError{ReasonBadSignature, HeaderLegacySignature + " does not verify against the body with the configured RSA key (HIGHLEVEL_WEBHOOK_RSA_PUBLIC_KEY)"}
	}
	return "rsa", nil
}

// Signer signs bodies the way HighLevel does; the sandbox and tests use it
// with their own key pairs.
type Signer struct {
	Ed  ed25519.PrivateKey
	RSA *rsa.PrivateKey
}

// SignEd25519 returns the X-GHL-Signature value for body.
func (s *Signer) SignEd25519(body []byte) string {
	return base64.StdEncoding.EncodeToString(ed25519.Sign(s.Ed, body))
}

// SignRSA returns the X-WH-Signature value for body.
func (s *Signer) SignRSA(body []byte) (string, error) {
	sum := sha256.Sum256(body)
	b, err := rsa.SignPKCS1v15(nil, s.RSA, crypto.SHA256, sum[:])
	if err != nil {
		return "", err
	}
	return base64.StdEncoding.EncodeToString(b), nil
}

// PublicKeys returns the signer's public keys as base64 SPKI DER (Ed25519)
// and PEM (RSA), the forms HIGHLEVEL_WEBHOOK_PUBLIC_KEY and
// HIGHLEVEL_WEBHOOK_RSA_PUBLIC_KEY take.
func (s *Signer) PublicKeys() (ed, rsaPEM string) {
	d, _ := x509.MarshalPKIXPublicKey(s.Ed.Public())
	r, _ := x509.MarshalPKIXPublicKey(&s.RSA.PublicKey)
	return base64.StdEncoding.EncodeToString(d), string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: r}))
}
