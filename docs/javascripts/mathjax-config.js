// MathJax's configuration, read by assets/mathjax/tex-chtml.js (loaded right after this file)
// when it starts; it then typesets the page itself. pymdownx.arithmatex (generic mode) wraps
// every formula in an element of class "arithmatex" with \( \) or \[ \] delimiters, and only
// those elements are typeset, so code blocks that happen to contain TeX are left alone.
window.MathJax = {
  tex: {
    inlineMath: [["\\(", "\\)"]],
    displayMath: [["\\[", "\\]"]],
    processEscapes: true,
    processEnvironments: true
  },
  options: {
    ignoreHtmlClass: ".*|",
    processHtmlClass: "arithmatex"
  }
};
