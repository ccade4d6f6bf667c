package nftables

import (
	"bufio"
	"io"
	"slices"
	"strconv"
	"strings"

	"nodeagent/proxier"
)

// desired is a family's whole table: the base fragment, then one per service port in state
// order.
type desired struct {
	f      *family
	frags  []*fragment
	owners []proxier.ServicePortName // owners[i] built frags[i+1]
}

func buildTable(st *proxier.State, f *family) *desired {
	d := &desired{f: f, frags: []*fragment{nil}}
	var counts []int
	for _, sp := range st.Services {
		if sp.Name.Family != f.pf {
			continue
		}
		fr := buildService(st, f, sp, nil)
		counts = mergeCounts(counts, fr.counts)
		d.frags = append(d.frags, fr)
		d.owners = append(d.owners, sp.Name)
	}
	d.frags[0] = buildBase(st, f, counts)
	return d
}

// mergeCounts returns the sorted union of counts (sorted) and more.
func mergeCounts(counts, more []int) []int {
	for _, n := range more {
		if i, found := slices.BinarySearch(counts, n); !found {
			counts = slices.Insert(counts, i, n)
		}
	}
	return counts
}

// writeText writes the table in nft -f syntax. The preamble makes the file self-contained and
// atomic: whatever table of that name exists is replaced as a whole.
func (d *desired) writeText(w *bufio.Writer) {
	f := d.f
	w.WriteString("add table " + f.name + " " + tableName + "\n")
	w.WriteString("delete table " + f.name + " " + tableName + "\n")
	w.WriteString("table " + f.name + " " + tableName + " {\n")

	var sets []*set
	elems := map[string][]element{}
	for _, fr := range d.frags {
		sets = append(sets, fr.sets...)
		for _, e := range fr.elems {
			elems[e.set] = append(elems[e.set], e)
		}
	}
	var b []byte
	for _, s := range sets {
		kw := "set"
		if s.isMap || s.endpoints {
			kw = "map"
		}
		w.WriteString("\t" + kw + " " + s.name + " {\n\t\t" + s.typeText(f) + "\n")
		if s.timeout > 0 {
			w.WriteString("\t\tflags dynamic,timeout\n\t\ttimeout " + strconv.FormatInt(int64(s.timeout.Seconds()), 10) + "s\n")
		}
		if s.comment != "" {
			w.WriteString("\t\tcomment " + strconv.Quote(s.comment) + "\n")
		}
		if es := elems[s.name]; len(es) > 0 {
			// Deduplicate shared keys (a cluster IP serves several ports) and sort for stable output.
			lines := make([]string, 0, len(es))
			for _, e := range es {
				b = appendKey(b[:0], s.kind, e.key)
				if s.isMap {
					b = append(b, " : "...)
					b = e.val.appendText(b, f)
				}
				if s.endpoints {
					b = append(b, " : "...)
					b = appendEndpoint(b, e.to)
				}
				lines = append(lines, string(b))
			}
			slices.Sort(lines)
			lines = slices.Compact(lines)
			w.WriteString("\t\telements = {\n\t\t\t" + strings.Join(lines, ",\n\t\t\t") + "\n\t\t}\n")
		}
		w.WriteString("\t}\n")
	}
	for _, fr := range d.frags {
		for _, c := range fr.chains {
			w.WriteString("\tchain " + c.name + " {\n")
			if h := c.hook; h != nil {
				w.WriteString("\t\ttype " + h.typ + " hook " + hookNames[h.hooknum] + " priority " +
					strconv.Itoa(int(h.priority)) + "; policy accept;\n")
			}
			for _, r := range c.rules {
				b = appendRule(append(b[:0], "\t\t"...), f, r)
				b = append(b, '\n')
				w.Write(b)
			}
			w.WriteString("\t}\n")
		}
	}
	w.WriteString("}\n")
}

// renderText renders st for the given families.
func renderText(w io.Writer, st *proxier.State, fams []*family) error {
	bw := bufio.NewWriter(w)
	for _, f := range fams {
		buildTable(st, f).writeText(bw)
	}
	return bw.Flush()
}
