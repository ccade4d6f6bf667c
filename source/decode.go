package source

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"

	v1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	sigsjson "sigs.k8s.io/json"
	"sigs.k8s.io/yaml"
)

// document is one object decoded from a manifest file, with where it came from. obj is never
// modified once decoded: later stages copy before they default or allocate.
type document struct {
	obj  runtime.Object
	key  Key
	kind *kind
	file string
	doc  int
	item int

	// Derived once: documents of files that did not change are reused across reloads.
	checked  bool
	reasons  []string       // why the object is invalid
	prepared runtime.Object // obj with the API server's defaults
}

// validate returns why the document's object is invalid (nil: valid).
func (d *document) validate() []string {
	if !d.checked {
		d.reasons = validateMeta(d.obj, d.kind.scope)
		if d.kind.validate != nil {
			d.reasons = append(d.reasons, d.kind.validate(d.obj)...)
		}
		d.checked = true
	}
	return d.reasons
}

// object returns the document's object with the API server's defaults applied.
func (d *document) object() runtime.Object {
	if d.prepared == nil {
		switch o := d.obj.(type) {
		case *v1.Service:
			svc := o.DeepCopy()
			defaultService(svc)
			d.prepared = svc
		case *discoveryv1.EndpointSlice:
			d.prepared = defaultEndpointSlice(o)
		default:
			d.prepared = d.obj
		}
	}
	return d.prepared
}

func (d *document) problem(format string, a ...any) Problem {
	return Problem{File: d.file, Doc: d.doc, Item: d.item, Kind: d.key.Kind,
		Object: types.NamespacedName{Namespace: d.key.Namespace, Name: d.key.Name}, Reason: fmt.Sprintf(format, a...)}
}

// parsed is what one manifest file yields.
type parsed struct {
	docs     []*document
	problems []Problem
	// ok is false when some document of the file did not parse or decode; the file as a whole is
	// then not trusted (a watcher keeps serving what it last produced).
	ok bool
}

// decodeFile decodes every document of a manifest file: a YAML stream of "---"-separated
// documents, or a stream of JSON objects. Documents of kinds that are not registered are skipped.
// Empty documents are not counted: Doc is the index among the documents that hold something.
func decodeFile(file string, data []byte) parsed {
	p := parsed{ok: true}
	fail := func(doc int, format string, a ...any) {
		p.ok = false
		p.problems = append(p.problems, Problem{File: file, Doc: doc, Reason: oneLine(fmt.Sprintf(format, a...))})
	}
	data = bytes.TrimPrefix(data, []byte("\xef\xbb\xbf")) // a UTF-8 byte order mark
	if trimmed := bytes.TrimLeft(data, " \t\r\n"); len(trimmed) > 0 && trimmed[0] == '{' {
		dec := json.NewDecoder(bytes.NewReader(trimmed))
		for n := 1; ; n++ {
			var raw json.RawMessage
			if err := dec.Decode(&raw); err == io.EOF {
				break
			} else if err != nil {
				fail(n, "invalid JSON: %v", err)
				break
			}
			p.decodeDocument(file, n, 0, raw, schema.GroupVersionKind{})
		}
		return p
	}
	n := 0
	for _, y := range splitYAML(data) {
		j, err := yaml.YAMLToJSONStrict(y)
		if err != nil {
			fail(n+1, "invalid YAML: %v", err)
			n++
			continue
		}
		if t := bytes.TrimSpace(j); len(t) == 0 || string(t) == "null" {
			continue // only comments or whitespace
		}
		n++
		p.decodeDocument(file, n, 0, j, schema.GroupVersionKind{})
	}
	return p
}

// splitYAML splits a YAML stream at its "---" document separators.
func splitYAML(data []byte) [][]byte {
	var docs [][]byte
	start := 0
	for i := 0; i < len(data); {
		end := bytes.IndexByte(data[i:], '\n')
		if end < 0 {
			end = len(data)
		} else {
			end += i + 1
		}
		line := data[i:end]
		if isSeparator(line) {
			docs = append(docs, data[start:i])
			start = end
		}
		i = end
	}
	return append(docs, data[start:])
}

// isSeparator reports whether line is a YAML document separator: "---" alone, or followed by
// blanks or a comment.
func isSeparator(line []byte) bool {
	rest, ok := bytes.CutPrefix(line, []byte("---"))
	if !ok {
		return false
	}
	rest = bytes.TrimSpace(rest)
	return len(rest) == 0 || rest[0] == '#'
}

// header is the part of every document read before its kind is known.
type header struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Metadata   struct {
		Name      string `json:"name"`
		Namespace string `json:"namespace"`
	} `json:"metadata"`
	Items []json.RawMessage `json:"items"`
}

// decodeDocument decodes one JSON document (or one item of a List: then item > 0 and def holds the
// apiVersion and kind a typed list such as ServiceList implies for items that do not say).
func (p *parsed) decodeDocument(file string, doc, item int, raw []byte, def schema.GroupVersionKind) {
	var h header
	fail := func(format string, a ...any) {
		p.ok = false
		p.problems = append(p.problems, Problem{File: file, Doc: doc, Item: item, Kind: h.Kind,
			Object: types.NamespacedName{Namespace: h.Metadata.Namespace, Name: h.Metadata.Name}, Reason: oneLine(fmt.Sprintf(format, a...))})
	}
	if err := json.Unmarshal(raw, &h); err != nil {
		var typeErr *json.UnmarshalTypeError
		if errors.As(err, &typeErr) && typeErr.Field == "" {
			fail("not a Kubernetes object (a JSON/YAML %s)", typeErr.Value)
		} else {
			fail("%v", err)
		}
		return
	}
	if h.APIVersion == "" {
		h.APIVersion = def.GroupVersion().String()
	}
	if h.Kind == "" {
		h.Kind = def.Kind
	}
	if h.Kind == "" || h.APIVersion == "" {
		fail("apiVersion and kind must both be set")
		return
	}
	gv, err := schema.ParseGroupVersion(h.APIVersion)
	if err != nil {
		fail("%v", err)
		return
	}
	if item == 0 && h.Items != nil && strings.HasSuffix(h.Kind, "List") {
		itemKind := gv.WithKind(strings.TrimSuffix(h.Kind, "List"))
		if h.Kind == "List" {
			itemKind = schema.GroupVersionKind{}
		}
		for i, it := range h.Items {
			p.decodeDocument(file, doc, i+1, it, itemKind)
		}
		return
	}
	gvk := gv.WithKind(h.Kind)
	k, other := lookup(gvk)
	if k == nil {
		if other != nil {
			fail("apiVersion %s is not supported for %s; use %s", h.APIVersion, h.Kind, other.gvk.GroupVersion())
		}
		return // a kind no proxy needs (Deployment, ConfigMap, ...)
	}
	if k.scope == Namespaced && h.Metadata.Namespace == "" {
		h.Metadata.Namespace = "default"
	}
	obj := k.new()
	strict, err := sigsjson.UnmarshalStrict(raw, obj)
	if err != nil {
		fail("%v", err)
		return
	}
	if len(strict) > 0 {
		fail("%v", errors.Join(strict...))
		return
	}
	m, err := meta.Accessor(obj)
	if err != nil {
		fail("%v", err)
		return
	}
	obj.GetObjectKind().SetGroupVersionKind(gvk)
	if k.scope == Namespaced {
		if m.GetNamespace() == "" {
			m.SetNamespace("default")
		}
	} else {
		m.SetNamespace("")
	}
	p.docs = append(p.docs, &document{
		obj: obj, kind: k, file: file, doc: doc, item: item,
		key: Key{GroupKind: gvk.GroupKind(), Namespace: m.GetNamespace(), Name: m.GetName()},
	})
}

// oneLine folds a multi-line error message (YAML errors list one line each) into one line.
func oneLine(s string) string { return strings.Join(strings.Fields(s), " ") }
