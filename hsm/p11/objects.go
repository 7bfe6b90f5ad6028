package p11

import "github.com/miekg/pkcs11"

// Object searches and attribute reads shared by the secret keys (keys.go),
// the asymmetric key pairs (asym.go) and the wrapping keys of key import
// (wrapping.go).

// findUpTo returns up to max handles of the objects matching tmpl (one
// C_FindObjects call). The search is always ended (C_FindObjectsFinal): an
// active find would block the next one on this session
// (CKR_OPERATION_ACTIVE).
func (t *Token) findUpTo(s pkcs11.SessionHandle, tmpl []*pkcs11.Attribute, max int) ([]pkcs11.ObjectHandle, error) {
	if err := t.mod.FindObjectsInit(s, tmpl); err != nil {
		return nil, classify("C_FindObjectsInit", err)
	}
	hs, _, err := t.mod.FindObjects(s, max)
	ferr := t.mod.FindObjectsFinal(s)
	if err != nil {
		return nil, classify("C_FindObjects", err)
	}
	if ferr != nil {
		return nil, classify("C_FindObjectsFinal", ferr)
	}
	return hs, nil
}

// findEvery returns the handles of every object matching tmpl (C_FindObjects
// in batches of 128 until none is left), appended to all. The search is
// always ended; the first error wins.
func (t *Token) findEvery(s pkcs11.SessionHandle, tmpl []*pkcs11.Attribute, all []pkcs11.ObjectHandle) ([]pkcs11.ObjectHandle, error) {
	if err := t.mod.FindObjectsInit(s, tmpl); err != nil {
		return all, classify("C_FindObjectsInit", err)
	}
	var ferr error
	for {
		hs, _, err := t.mod.FindObjects(s, 128)
		if err != nil {
			ferr = classify("C_FindObjects", err)
			break
		}
		if len(hs) == 0 {
			break
		}
		all = append(all, hs...)
	}
	if err := t.mod.FindObjectsFinal(s); err != nil && ferr == nil {
		ferr = classify("C_FindObjectsFinal", err)
	}
	return all, ferr
}

// idAndLabel reads an object's CKA_ID and CKA_LABEL. gone reports an
// object destroyed meanwhile (CKR_OBJECT_HANDLE_INVALID; err is then nil).
func (t *Token) idAndLabel(s pkcs11.SessionHandle, h pkcs11.ObjectHandle) (id, label []byte, gone bool, err error) {
	attrs, err := t.mod.GetAttributeValue(s, h, []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_ID, nil),
		pkcs11.NewAttribute(pkcs11.CKA_LABEL, nil),
	})
	if err != nil {
		if rvOf(classify("", err)) == pkcs11.CKR_OBJECT_HANDLE_INVALID {
			return nil, nil, true, nil
		}
		return nil, nil, false, classify("C_GetAttributeValue", err)
	}
	return attrValue(attrs, pkcs11.CKA_ID), attrValue(attrs, pkcs11.CKA_LABEL), false, nil
}

// attrValue returns the value of the attribute typ in attrs, as
// C_GetAttributeValue returned them (the last one should a module repeat
// it; nil if it is absent).
func attrValue(attrs []*pkcs11.Attribute, typ uint) []byte {
	var v []byte
	for _, a := range attrs {
		if a.Type == typ {
			v = a.Value
		}
	}
	return v
}
