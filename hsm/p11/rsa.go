package p11

import "github.com/miekg/pkcs11"

// RSA-2048 key-pair pieces shared by the asymmetric CMKs (asym.go) and the
// wrapping keys of key import (wrapping.go).

// rsaSizeAttrs are the public-template attributes of every RSA key pair
// generated here: a 2048-bit modulus (rsaModulusBits, =
// hsm.WrappingKeyBits) and public exponent 65537.
func rsaSizeAttrs() []*pkcs11.Attribute {
	return []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_MODULUS_BITS, rsaModulusBits),
		pkcs11.NewAttribute(pkcs11.CKA_PUBLIC_EXPONENT, []byte{1, 0, 1}),
	}
}

// tokenPrivateTemplate is the template of a private key made as a token
// object (private, sensitive, not extractable) of keyType, with the
// CKA_ID objectID and CKA_LABEL label: uses lists the usage attributes
// (CKA_SIGN, CKA_DECRYPT, CKA_UNWRAP, ...), which go between the two.
func tokenPrivateTemplate(keyType uint, objectID []byte, label string, uses ...*pkcs11.Attribute) []*pkcs11.Attribute {
	tmpl := []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_PRIVATE_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, keyType),
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),
		pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, true),
		pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, true),
		pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, false),
	}
	tmpl = append(tmpl, uses...)
	return append(tmpl,
		pkcs11.NewAttribute(pkcs11.CKA_ID, objectID),
		pkcs11.NewAttribute(pkcs11.CKA_LABEL, label))
}

// generateRSAPair makes an RSA key pair from the templates pub and priv
// (C_GenerateKeyPair, CKM_RSA_PKCS_KEY_PAIR_GEN). The caller has checked
// the mechanism.
func (t *Token) generateRSAPair(s pkcs11.SessionHandle, pub, priv []*pkcs11.Attribute) (pubH, privH pkcs11.ObjectHandle, err error) {
	pubH, privH, err = t.mod.GenerateKeyPair(s,
		[]*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_RSA_PKCS_KEY_PAIR_GEN, nil)}, pub, priv)
	if err != nil {
		return 0, 0, classify("C_GenerateKeyPair", err)
	}
	return pubH, privH, nil
}

// readRSAParts reads the modulus and public exponent (big-endian bytes,
// unchecked) of the RSA public key object h.
func (t *Token) readRSAParts(s pkcs11.SessionHandle, h pkcs11.ObjectHandle) (n, e []byte, err error) {
	attrs, err := t.mod.GetAttributeValue(s, h, []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_MODULUS, nil),
		pkcs11.NewAttribute(pkcs11.CKA_PUBLIC_EXPONENT, nil),
	})
	if err != nil {
		return nil, nil, classify("C_GetAttributeValue", err)
	}
	return attrValue(attrs, pkcs11.CKA_MODULUS), attrValue(attrs, pkcs11.CKA_PUBLIC_EXPONENT), nil
}
